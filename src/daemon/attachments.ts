// Calls for one attachment (network, container id, ifname) run in arrival order, one at a time: in exec
// mode a runtime that gives up kills the plugin, but in berthd the ADD keeps running, and a DEL that
// overtook it would leave the late ADD's veth, lease and nft elements behind.

export interface AttachmentKey {
  network: string;
  containerId: string;
  ifname: string;
}

export class AttachmentQueue {
  private readonly tails = new Map<string, Promise<void>>();

  /** Runs `fn` after every call for the same attachment that arrived before it. */
  async run<T>(key: AttachmentKey | undefined, fn: () => Promise<T>): Promise<T> {
    if (key === undefined) return fn();
    const id = `${key.network}\u0000${key.containerId}\u0000${key.ifname}`;
    const before = this.tails.get(id) ?? Promise.resolve();
    let done: () => void = () => undefined;
    const mine = new Promise<void>((resolve) => (done = resolve));
    const tail = before.then(() => mine);
    this.tails.set(id, tail);
    try {
      await before;
      return await fn();
    } finally {
      done();
      if (this.tails.get(id) === tail) this.tails.delete(id);
    }
  }

  /** Attachments with a call running or waiting. */
  get size(): number {
    return this.tails.size;
  }
}

/** The attachment a forwarded call concerns, or undefined (GC, STATUS, VERSION, unreadable config). */
export function attachmentOf(
  env: Readonly<Record<string, string>>,
  stdin: string,
): AttachmentKey | undefined {
  const command = env.CNI_COMMAND;
  if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK') return undefined;
  const containerId = env.CNI_CONTAINERID ?? '';
  const ifname = env.CNI_IFNAME ?? '';
  if (containerId === '' || ifname === '') return undefined;
  let network: unknown;
  try {
    network = (JSON.parse(stdin) as { name?: unknown }).name;
  } catch {
    return undefined;
  }
  return typeof network === 'string' ? { network, containerId, ifname } : undefined;
}

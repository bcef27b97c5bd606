// Which CNI spec versions the container runtimes can read, and what `berth doctor` concludes from the
// runtimes installed, the network configs in the conf dir and the plugin dir. Pure: the doctor command
// gathers the facts (versions, files) and passes them in.
//
// A runtime reads results through its vendored libcni; what a libcni line accepts:
//   libcni < 1.0      results up to 0.4.0
//   libcni 1.0, 1.1   up to 1.0.0 (a 1.1.0 result fails: "unsupported CNI result version"); ignores cniVersions
//   libcni >= 1.2     up to 1.1.0, and picks the highest version it supports from `cniVersions`
// and which libcni each runtime line carries (verified here only for containerd 1.6.20, Debian 12: it
// runs pods on a 1.0.0 config and fails every pod on a 1.1.0 one):
//   containerd 1.4, 1.5 → libcni 0.8 · 1.6, 1.7 → 1.1 · 2.x → 1.2
//   CRI-O < 1.30 → libcni 1.1 · >= 1.30 → 1.2
//   podman 4.x (CNI backend) → libcni 1.1 · podman 5 has no CNI backend by default (netavark)

export type RuntimeName = 'containerd' | 'cri-o' | 'podman';

export interface RuntimeSupport {
  /** Highest cniVersion whose results the runtime reads. */
  maxVersion: string;
  /** The runtime's libcni honours the conflist's `cniVersions` list (spec 1.1). */
  readsCniVersions: boolean;
  /** The runtime executes the `loopback` plugin for every pod (it must be in the plugin dir). */
  needsLoopback: boolean;
  /** The runtime does not read CNI configs at all (podman 5: netavark). */
  noCni?: boolean;
  note: string;
}

const known = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

/** Compares two dotted versions numerically; a part that is not a number counts as 0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map((x) => parseInt(x, 10) || 0);
  const pb = b.split('.').map((x) => parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

const libcni = {
  old: { maxVersion: '0.4.0', readsCniVersions: false },
  v1: { maxVersion: '1.0.0', readsCniVersions: false },
  v12: { maxVersion: '1.1.0', readsCniVersions: true },
};

/** What a runtime at a version reads. `version` is the runtime's own version, e.g. "1.6.20". */
export function runtimeSupport(name: RuntimeName, version: string): RuntimeSupport {
  const at = (v: string): boolean => compareVersions(version, v) >= 0;
  switch (name) {
    case 'containerd':
      if (at('2.0.0')) return { ...libcni.v12, needsLoopback: true, note: 'containerd >= 2.0 (libcni 1.2)' };
      if (at('1.6.0'))
        return { ...libcni.v1, needsLoopback: true, note: 'containerd 1.6/1.7 (libcni 1.1): up to 1.0.0' };
      return { ...libcni.old, needsLoopback: true, note: 'containerd < 1.6 (libcni 0.8): up to 0.4.0' };
    // CRI-O brings the pod's lo up itself, over netlink (cri-o/ocicni#71, 2020): no loopback plugin.
    case 'cri-o':
      if (at('1.30.0')) return { ...libcni.v12, needsLoopback: false, note: 'CRI-O >= 1.30 (libcni 1.2)' };
      return { ...libcni.v1, needsLoopback: false, note: 'CRI-O < 1.30 (libcni 1.1): up to 1.0.0' };
    case 'podman':
      if (at('5.0.0'))
        return {
          ...libcni.v12,
          needsLoopback: false,
          noCni: true,
          note: 'podman 5 uses netavark, not CNI configs',
        };
      return { ...libcni.v1, needsLoopback: false, note: 'podman 4 with the CNI backend (libcni 1.1)' };
  }
}

export interface NetworkConfigFile {
  file: string;
  /** The parsed config, or the reason it could not be read. */
  config?: Record<string, unknown>;
  error?: string;
}

export interface InstalledRuntime {
  name: RuntimeName;
  version: string;
}

export interface DoctorFacts {
  confDir: string;
  binDir: string;
  configs: NetworkConfigFile[];
  /** Names of the files in binDir. */
  plugins: string[];
  /** Each plugin type's answer to VERSION (its supportedVersions), when it could be run. */
  pluginVersions?: Record<string, string[]>;
  /** Why a plugin type's VERSION failed (run as with no berthd answering: a shim runs its fallback). */
  pluginFailures?: Record<string, string>;
  runtimes: InstalledRuntime[];
}

export interface Finding {
  level: 'ok' | 'warn';
  message: string;
}

/** The version a runtime will use for a config: with cniVersions (and a libcni that reads it), the highest
 * listed version it supports; otherwise cniVersion. */
export function effectiveVersion(
  config: Record<string, unknown>,
  support: RuntimeSupport,
): string | undefined {
  const v = typeof config.cniVersion === 'string' ? config.cniVersion : undefined;
  const list = Array.isArray(config.cniVersions)
    ? config.cniVersions.filter((x): x is string => typeof x === 'string')
    : [];
  if (support.readsCniVersions && list.length > 0) {
    // libcni takes the highest of cniVersions and cniVersion itself that it supports.
    const usable = [...list, ...(v !== undefined ? [v] : [])].filter(
      (x) => compareVersions(x, support.maxVersion) <= 0 && known.includes(x),
    );
    usable.sort(compareVersions);
    return usable.at(-1) ?? v;
  }
  return v;
}

/** The plugin types a network config runs: each plugin's `type` and its IPAM's. */
export function pluginTypes(config: Record<string, unknown>): string[] {
  const plugins = Array.isArray(config.plugins) ? (config.plugins as unknown[]) : [config];
  const types: string[] = [];
  for (const p of plugins) {
    if (typeof p !== 'object' || p === null) continue;
    const o = p as Record<string, unknown>;
    if (typeof o.type === 'string') types.push(o.type);
    const ipam = o.ipam as Record<string, unknown> | undefined;
    if (typeof ipam === 'object' && ipam !== null && typeof ipam.type === 'string') types.push(ipam.type);
  }
  return types;
}

/** Every finding, warnings first. The first config in lexical order is the one runtimes use. */
export function diagnose(f: DoctorFacts): Finding[] {
  const out: Finding[] = [];
  const warn = (message: string): number => out.push({ level: 'warn', message });
  const ok = (message: string): number => out.push({ level: 'ok', message });
  const has = new Set(f.plugins);
  if (f.runtimes.length === 0)
    ok('no container runtime found (containerd, crio, podman): version checks skipped');
  const cniRuntimes = f.runtimes.filter((r) => !runtimeSupport(r.name, r.version).noCni);
  for (const r of f.runtimes) {
    const s = runtimeSupport(r.name, r.version);
    // Not a problem of the configs: another runtime on the host may read them.
    if (s.noCni) ok(`${r.name} ${r.version}: ${s.note}; the configs in ${f.confDir} are not used by it`);
    else ok(`${r.name} ${r.version}: reads CNI results up to ${s.maxVersion} (${s.note})`);
    if (s.needsLoopback && !s.noCni) {
      if (has.has('loopback')) ok(`${r.name} needs the loopback plugin: ${f.binDir}/loopback is there`);
      else
        warn(
          `${r.name} runs the loopback plugin for every pod, and ${f.binDir}/loopback is missing: install it ` +
            '(Debian: containernetworking-plugins, then copy /usr/lib/cni/loopback) or every pod fails',
        );
    }
  }
  const sorted = [...f.configs].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
  if (sorted.length === 0) warn(`no network config in ${f.confDir}: runtimes report NetworkReady=false`);
  sorted.forEach((c, i) => {
    const where = `${f.confDir}/${c.file}${i === 0 ? ' (first: the one runtimes use)' : ''}`;
    if (c.config === undefined) {
      warn(`${where}: cannot be read: ${c.error ?? 'unknown error'}`);
      return;
    }
    const v = c.config.cniVersion;
    if (typeof v !== 'string') {
      warn(`${where}: no cniVersion`);
      return;
    }
    if (!known.includes(v)) warn(`${where}: cniVersion ${v} is not a CNI spec version (${known.join(', ')})`);
    for (const r of cniRuntimes) {
      const s = runtimeSupport(r.name, r.version);
      const eff = effectiveVersion(c.config, s);
      if (eff !== undefined && compareVersions(eff, s.maxVersion) > 0)
        warn(
          `${where}: ${r.name} ${r.version} reads results up to ${s.maxVersion} but this config asks for ${eff}` +
            `: every pod on it fails ("unsupported CNI result version"); use "cniVersion": "${s.maxVersion}"` +
            (s.readsCniVersions ? '' : ' (this libcni ignores cniVersions)'),
        );
      else ok(`${where}: ${r.name} ${r.version} will use cniVersion ${eff ?? v}`);
    }
    for (const t of pluginTypes(c.config))
      if (!has.has(t)) warn(`${where}: plugin type ${t} is not in ${f.binDir}`);
    for (const t of new Set(pluginTypes(c.config))) {
      const failure = f.pluginFailures?.[t];
      if (failure === undefined) continue;
      // berth's shims run the standalone program when no berthd takes the call: that is what was run.
      const berthShim = t === 'berth-bridge' || t === 'berth-ipam';
      warn(
        berthShim
          ? `${where}: ${f.binDir}/${t} fails VERSION when no berthd takes the call (${failure}): every call on this network fails then`
          : `${where}: ${f.binDir}/${t} fails VERSION (${failure}): every call on this network fails`,
      );
    }
    // Each plugin must speak the version the runtime gives the whole list (libcni >= 1.2 picks it from
    // cniVersions without asking them): one that stops below it fails every ADD, DEL and STATUS.
    for (const r of cniRuntimes) {
      const eff = effectiveVersion(c.config, runtimeSupport(r.name, r.version));
      if (eff === undefined) continue;
      for (const t of new Set(pluginTypes(c.config))) {
        const supported = f.pluginVersions?.[t];
        if (supported !== undefined && !supported.includes(eff))
          warn(
            `${where}: ${r.name} ${r.version} gives its plugins cniVersion ${eff}, which ${t} does not speak (it supports ${supported.join(', ')}): every ADD, DEL and STATUS on this network fails; ` +
              (Array.isArray(c.config.cniVersions)
                ? `drop ${eff} from cniVersions`
                : `use a cniVersion it supports`) +
              ` or update ${t}`,
          );
      }
    }
  });
  return [...out.filter((x) => x.level === 'warn'), ...out.filter((x) => x.level === 'ok')];
}

/** Reads a runtime's version from its `--version` output. */
export function parseRuntimeVersion(name: RuntimeName, output: string): string | undefined {
  const patterns: Record<RuntimeName, RegExp> = {
    containerd: /containerd\s+\S+\s+v?(\d+\.\d+\.\d+)/,
    'cri-o': /(?:crio version|Version:)\s+v?(\d+\.\d+\.\d+)/i,
    podman: /podman version\s+v?(\d+\.\d+\.\d+)/i,
  };
  return patterns[name].exec(output)?.[1];
}

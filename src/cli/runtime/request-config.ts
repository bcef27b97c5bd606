// Builds what one plugin of a list receives: its environment and its request configuration (libcni's
// buildOneConfig / injectRuntimeConfig / args), kept apart from execution so it can be checked alone.
import type { NetworkConfigList, PluginConf } from './conflist';
import { goJson } from './conflist';

export type RuntimeCommand = 'ADD' | 'CHECK' | 'DEL' | 'GC' | 'STATUS';

/** One attachment as the runtime sees it (libcni's RuntimeConf). */
export interface RuntimeConf {
  containerId: string;
  netns: string;
  ifName: string;
  /** CNI_ARGS pairs, order kept. */
  args: [string, string][];
  /** Capability arguments (CAP_ARGS); each plugin gets only those it declares. */
  capabilityArgs: Record<string, unknown>;
}

/** GC and STATUS concern the whole network: libcni sends them with every per-attachment variable empty. */
export const NO_ATTACHMENT: RuntimeConf = {
  containerId: '',
  netns: '',
  ifName: '',
  args: [],
  capabilityArgs: {},
};

export interface PluginRequestInput {
  command: RuntimeCommand;
  list: NetworkConfigList;
  plugin: PluginConf;
  rt: RuntimeConf;
  /** ADD: the previous plugin's result; CHECK/DEL: the cached final result in the list's version. */
  prevResult?: Record<string, unknown> | undefined;
  /** GC only: undefined means the caller gave no list (cnitool), so neither key is sent. */
  validAttachments?: { containerID: string; ifname: string }[] | undefined;
}

/** The stdin of one plugin execution. */
export function buildPluginConfig(input: PluginRequestInput): string {
  const { command, list, plugin, rt } = input;
  const conf: Record<string, unknown> = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  if (command === 'ADD' || command === 'CHECK' || command === 'DEL') {
    if (input.prevResult !== undefined) conf.prevResult = input.prevResult;
    const runtimeConfig = pickCapabilities(plugin, rt.capabilityArgs);
    // libcni replaces the key only when there is something to send, so an admin-written one survives.
    if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  }
  if (command === 'GC' && input.validAttachments !== undefined) {
    conf['cni.dev/valid-attachments'] = input.validAttachments;
    // The spec-v1.1.0 tag named the key this way; libcni sends both (containernetworking/cni#1101).
    conf['cni.dev/attachments'] = input.validAttachments;
  }
  return goJson(conf);
}

/** runtimeConfig[cap] for each capability the plugin sets to true and the runtime has a value for. */
export function pickCapabilities(
  plugin: PluginConf,
  capabilityArgs: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const caps = plugin.capabilities;
  if (typeof caps !== 'object' || caps === null) return out;
  for (const [cap, enabled] of Object.entries(caps)) {
    if (enabled === true && Object.prototype.hasOwnProperty.call(capabilityArgs, cap))
      out[cap] = capabilityArgs[cap];
  }
  return out;
}

/** The environment of one plugin execution: the runtime's own plus all six CNI_* variables (libcni Args.AsEnv). */
export function buildPluginEnv(input: {
  base: Record<string, string | undefined>;
  command: RuntimeCommand;
  rt: RuntimeConf;
  path: readonly string[];
}): Record<string, string> {
  const { rt } = input;
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(input.base)) if (v !== undefined) env[k] = v;
  env.CNI_COMMAND = input.command;
  env.CNI_CONTAINERID = rt.containerId;
  env.CNI_NETNS = rt.netns;
  env.CNI_ARGS = rt.args.map(([k, v]) => `${k}=${v}`).join(';');
  env.CNI_IFNAME = rt.ifName;
  env.CNI_PATH = input.path.join(':');
  return env;
}

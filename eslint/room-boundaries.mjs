// Encodes the room table (README.md's Layout; it grew from the shared DESIGN.md's): which folder of src/
// may import which. A wrong-way import (the protocol room reaching into the bridge, the IPAM room into
// the kernel room, anything into the CLI) fails lint instead of waiting for a review. Static imports,
// re-exports, `import()` and literal `require()` calls are all checked, since the plugin path loads rooms
// lazily with `require`.
import path from 'node:path';

// Room → rooms it may import. `address` is the shared vocabulary (IP addresses and prefixes) that every
// room may use and that imports nothing of ours. Top-level files are rooms of their own: `main` is the
// multi-call entry point, `native-addon` the loader of the N-API addon.
export const ROOM_IMPORTS = {
  address: [],
  'native-addon': [],
  'cni-spec': ['address'],
  netlink: ['address', 'cni-spec', 'native-addon'],
  bridge: ['address', 'cni-spec', 'netlink', 'native-addon'],
  ipam: ['address', 'cni-spec', 'native-addon'],
  cluster: ['address', 'cni-spec', 'netlink', 'ipam', 'native-addon'],
  daemon: ['address', 'cni-spec', 'netlink', 'bridge', 'ipam', 'cluster', 'native-addon'],
  cli: ['address', 'cni-spec', 'netlink', 'bridge', 'ipam', 'cluster', 'daemon', 'native-addon', 'sea'],
  sea: ['main', 'native-addon'],
  main: ['*'],
};

// Room → room it may import → the only files (under the importing room, without extension) through which
// it may: a door. The bridge reaches the kernel room through bridge/kernel.ts alone.
export const ROOM_DOORS = {
  bridge: { netlink: ['kernel'] },
};

function roomOf(srcRoot, file) {
  const rel = path.relative(srcRoot, file);
  if (rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
  const [first, ...rest] = rel.split(path.sep);
  if (first === undefined) return undefined;
  return rest.length === 0 ? first.replace(/\.[cm]?[jt]s$/, '') : first;
}

export const roomBoundaries = {
  meta: {
    type: 'problem',
    docs: { description: 'imports between rooms follow the room table (README.md, Layout)' },
    schema: [],
    messages: {
      wrongWay:
        "room '{{from}}' may not import room '{{to}}' (allowed: {{allowed}}); see the room table in README.md's Layout",
      notTheDoor: "room '{{from}}' reaches room '{{to}}' only through {{doors}}; import it from there",
      unknownRoom:
        "'{{room}}' is not a room in eslint/room-boundaries.mjs; add it to ROOM_IMPORTS and README.md's Layout",
    },
  },
  create(context) {
    const file = context.physicalFilename ?? context.filename;
    const srcRoot = path.join(context.cwd ?? process.cwd(), 'src');
    const from = roomOf(srcRoot, file);
    if (from === undefined) return {};
    const allowed = ROOM_IMPORTS[from];
    const check = (node, specifier) => {
      if (typeof specifier !== 'string' || !specifier.startsWith('.')) return;
      const to = roomOf(srcRoot, path.resolve(path.dirname(file), specifier));
      if (to === undefined || to === from) return;
      if (allowed === undefined) {
        context.report({ node, messageId: 'unknownRoom', data: { room: from } });
        return;
      }
      if (allowed.includes('*') || allowed.includes(to)) {
        const doors = ROOM_DOORS[from]?.[to];
        const self = path.relative(path.join(srcRoot, from), file).replace(/\.[cm]?[jt]s$/, '');
        if (doors !== undefined && !doors.includes(self)) {
          const list = doors.map((d) => `src/${from}/${d}.ts`).join(', ');
          context.report({ node, messageId: 'notTheDoor', data: { from, to, doors: list } });
        }
        return;
      }
      context.report({
        node,
        messageId: 'wrongWay',
        data: { from, to, allowed: allowed.length > 0 ? allowed.join(', ') : 'nothing of ours' },
      });
    };
    const fromSource = (node) => node.source && check(node.source, node.source.value);
    return {
      ImportDeclaration: fromSource,
      ExportNamedDeclaration: fromSource,
      ExportAllDeclaration: fromSource,
      ImportExpression: (node) => node.source.type === 'Literal' && check(node.source, node.source.value),
      TSImportType: (node) => {
        const arg = node.argument?.literal ?? node.argument;
        if (arg && arg.type === 'Literal') check(node, arg.value);
      },
      CallExpression: (node) => {
        const [arg] = node.arguments;
        if (node.callee.type === 'Identifier' && node.callee.name === 'require' && arg?.type === 'Literal') {
          check(node, arg.value);
        }
      },
    };
  },
};

export default { rules: { 'room-boundaries': roomBoundaries } };

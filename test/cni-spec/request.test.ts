import { describe, expect, it } from 'vitest';
import { assertKnownCniArgs, parseCniArgs } from '../../src/cni-spec/env-args';
import { ErrorCode } from '../../src/cni-spec/errors';
import { type Invocation, caseInsensitiveGet, parseRequest } from '../../src/cni-spec/request';
import { SUPPORTED_VERSIONS } from '../../src/cni-spec/versions';
import { expectCniError } from './helpers';

const ADD_ENV = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'ctr1',
  CNI_NETNS: '/run/netns/bt-x',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin:/usr/lib/cni',
} as const;
const CONF = { cniVersion: '1.1.0', name: 'net1', type: 'berth-bridge' };

function inv(env: Record<string, string | undefined>, conf: unknown = CONF): Invocation {
  return { env, stdin: typeof conf === 'string' ? conf : JSON.stringify(conf) };
}
function withEnv(overrides: Record<string, string | undefined>): Invocation {
  return inv({ ...ADD_ENV, ...overrides });
}
function withConf(
  overrides: Record<string, unknown>,
  env: Record<string, string | undefined> = ADD_ENV,
): Invocation {
  return inv(env, { ...CONF, ...overrides });
}

describe('environment rules', () => {
  it.each([
    ['unknown command', { CNI_COMMAND: 'FOO' }, /unknown CNI_COMMAND: FOO/],
    ['lower-case command', { CNI_COMMAND: 'add' }, /unknown CNI_COMMAND: add/],
    ['no command', { CNI_COMMAND: undefined }, /\[CNI_COMMAND\] missing/],
    ['ADD without container id', { CNI_CONTAINERID: undefined }, /\[CNI_CONTAINERID\] missing/],
    ['ADD with empty container id', { CNI_CONTAINERID: '' }, /\[CNI_CONTAINERID\] missing/],
    ['ADD without netns', { CNI_NETNS: undefined }, /\[CNI_NETNS\] missing/],
    ['ADD without ifname', { CNI_IFNAME: undefined }, /\[CNI_IFNAME\] missing/],
    ['ADD without path', { CNI_PATH: '' }, /\[CNI_PATH\] missing/],
    [
      'ADD without anything',
      { CNI_CONTAINERID: undefined, CNI_NETNS: undefined, CNI_IFNAME: undefined, CNI_PATH: undefined },
      /\[CNI_CONTAINERID CNI_NETNS CNI_IFNAME CNI_PATH\] missing/,
    ],
    ['CHECK without netns', { CNI_COMMAND: 'CHECK', CNI_NETNS: undefined }, /\[CNI_NETNS\] missing/],
    [
      'DEL without container id',
      { CNI_COMMAND: 'DEL', CNI_CONTAINERID: undefined },
      /\[CNI_CONTAINERID\] missing/,
    ],
    ['DEL without ifname', { CNI_COMMAND: 'DEL', CNI_IFNAME: undefined }, /\[CNI_IFNAME\] missing/],
    ['GC without path', { CNI_COMMAND: 'GC', CNI_PATH: undefined }, /\[CNI_PATH\] missing/],
    [
      'every problem named at once',
      { CNI_CONTAINERID: undefined, CNI_IFNAME: 'a/b' },
      /\[CNI_CONTAINERID\] missing; CNI_IFNAME "a\/b" must not contain "\/"/,
    ],
  ])('%s → code 4', (_label, overrides, msg) => {
    expectCniError(() => parseRequest(withEnv(overrides)), ErrorCode.InvalidEnvironmentVariables, msg);
  });

  it.each([
    ['', 'must not be empty'],
    ['abcdefghijklmnop', 'at most 15 bytes'],
    ['éééééééé', 'at most 15 bytes'], // 8 characters, 16 bytes
    ['.', 'must not be "." or ".."'],
    ['..', 'must not be "." or ".."'],
    ['a/b', 'must not contain "/"'],
    ['eth0:1', 'must not contain ":"'],
    ['eth 0', 'whitespace'],
    ['eth\t0', 'whitespace'],
    ['eth0\n', 'whitespace'],
    ['eth%d', 'must not contain "%"'],
    ['%', 'must not contain "%"'],
  ])('ifname %j is refused (%s)', (ifname, why) => {
    // An empty ifname counts as missing; the rest are named with their problem.
    const err = expectCniError(
      () => parseRequest(withEnv({ CNI_IFNAME: ifname })),
      ErrorCode.InvalidEnvironmentVariables,
    );
    expect(err.message).toContain(ifname === '' ? '[CNI_IFNAME] missing' : why);
  });

  it.each(['eth0', 'net1.100', 'abcdefghijklmno', 'ééééééé', 'e_-x'])('ifname %j is accepted', (ifname) => {
    expect(parseRequest(withEnv({ CNI_IFNAME: ifname })).ifname).toBe(ifname);
  });

  it.each(['a/b', '../x', '-x', '.x', '_x', 'a b', 'ctr$1', 'é'])('container id %j is refused', (id) => {
    expectCniError(
      () => parseRequest(withEnv({ CNI_CONTAINERID: id })),
      ErrorCode.InvalidEnvironmentVariables,
      /CNI_CONTAINERID/,
    );
  });

  it.each(['ctr1', 'A1_b.c-d', 'cnitool-0123456789abcdef0123', 'f'.repeat(64)])(
    'container id %j is accepted',
    (id) => {
      expect(parseRequest(withEnv({ CNI_CONTAINERID: id })).containerId).toBe(id);
    },
  );

  it('DEL tolerates an absent or empty netns', () => {
    expect(parseRequest(withEnv({ CNI_COMMAND: 'DEL', CNI_NETNS: undefined })).netns).toBe('');
    expect(parseRequest(withEnv({ CNI_COMMAND: 'DEL', CNI_NETNS: '' })).netns).toBe('');
  });

  it.each(['GC', 'STATUS'])(
    '%s needs no container id, netns or ifname and ignores what libcni sends empty',
    (command) => {
      const env = {
        CNI_COMMAND: command,
        CNI_PATH: '/opt/cni/bin',
        CNI_CONTAINERID: '',
        CNI_NETNS: '',
        CNI_IFNAME: '',
        CNI_ARGS: '',
      };
      const req = parseRequest(inv(env));
      expect(req).toMatchObject({ command, containerId: '', netns: '', ifname: '', path: ['/opt/cni/bin'] });
      expect(req.cniArgs.size).toBe(0);
    },
  );

  it('STATUS runs without CNI_PATH (the spec leaves it optional there)', () => {
    expect(parseRequest(inv({ CNI_COMMAND: 'STATUS' })).path).toEqual([]);
  });

  it('fills the request from the environment and keeps stdin verbatim', () => {
    const stdin = `{ "cniVersion": "1.1.0",\n  "name": "net1", "type": "berth-bridge" }`;
    const req = parseRequest({ env: { ...ADD_ENV, CNI_PATH: '/a::/b:' }, stdin });
    expect(req).toMatchObject({
      command: 'ADD',
      containerId: 'ctr1',
      netns: '/run/netns/bt-x',
      ifname: 'eth0',
      path: ['/a', '/b'],
      cniVersion: '1.1.0',
      stdin,
      config: CONF,
    });
    expect(req.prevResult).toBeUndefined();
    expect(req.validAttachments).toBeUndefined();
  });

  it('ignores extra environment variables and hands the whole environment on', () => {
    const extra = {
      PATH: '/usr/bin',
      TRACEPARENT: '00-abc-def-01',
      CNI_NETNS_OVERRIDE: '1',
      BAGGAGE: 'k=v',
      EMPTY: undefined,
    };
    const req = parseRequest(withEnv(extra));
    expect(req.env).toEqual({
      ...ADD_ENV,
      PATH: '/usr/bin',
      TRACEPARENT: '00-abc-def-01',
      CNI_NETNS_OVERRIDE: '1',
      BAGGAGE: 'k=v',
    });
    expect('EMPTY' in req.env).toBe(false);
  });
});

describe('CNI_ARGS', () => {
  it('parses the pairs containerd sends, keys as given', () => {
    const raw =
      'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=ctr1;IP=198.18.0.5';
    const req = parseRequest(withEnv({ CNI_ARGS: raw }));
    expect([...req.cniArgs]).toEqual([
      ['IgnoreUnknown', '1'],
      ['K8S_POD_NAMESPACE', 'default'],
      ['K8S_POD_NAME', 'web-0'],
      ['K8S_POD_INFRA_CONTAINER_ID', 'ctr1'],
      ['IP', '198.18.0.5'],
    ]);
  });

  it('allows empty values and a trailing separator', () => {
    expect([...parseCniArgs('A=;B=2;')]).toEqual([
      ['A', ''],
      ['B', '2'],
    ]);
  });

  it.each(['novalue', 'A=1=2', '=x', 'A=1;;B'])('refuses %j with code 4', (raw) => {
    // "A=1;;B" has an empty segment (skipped) and a pair without "=".
    expectCniError(
      () => parseRequest(withEnv({ CNI_ARGS: raw })),
      ErrorCode.InvalidEnvironmentVariables,
      /CNI_ARGS/,
    );
  });

  it('is not read by GC (libcni sends it empty there)', () => {
    const req = parseRequest(inv({ CNI_COMMAND: 'GC', CNI_PATH: '/x', CNI_ARGS: 'garbage' }));
    expect(req.cniArgs.size).toBe(0);
  });

  it.each([
    ['no IgnoreUnknown', 'K8S_POD_NAME=p', false],
    ['IgnoreUnknown=0', 'IgnoreUnknown=0;K8S_POD_NAME=p', false],
    ['IgnoreUnknown=false', 'IgnoreUnknown=false;K8S_POD_NAME=p', false],
    ['IgnoreUnknown=1', 'IgnoreUnknown=1;K8S_POD_NAME=p', true],
    ['IgnoreUnknown=TRUE', 'IgnoreUnknown=TRUE;K8S_POD_NAME=p', true],
    ['only known keys', 'IP=198.18.0.9', true],
  ])('unknown keys with %s → accepted: %s', (_label, raw, accepted) => {
    const check = (): void => assertKnownCniArgs(parseCniArgs(raw), ['IP', 'MAC']);
    if (accepted) expect(check).not.toThrow();
    else expectCniError(check, ErrorCode.InvalidEnvironmentVariables, /unknown CNI_ARGS "K8S_POD_NAME"/);
  });

  it('refuses an IgnoreUnknown that is not a boolean word', () => {
    expectCniError(
      () => assertKnownCniArgs(parseCniArgs('IgnoreUnknown=maybe'), []),
      ErrorCode.InvalidEnvironmentVariables,
      /IgnoreUnknown/,
    );
  });
});

describe('stdin configuration', () => {
  it.each([
    ['not JSON', '{', ErrorCode.DecodingFailure, /decoding network config/],
    ['empty stdin', '', ErrorCode.DecodingFailure, /stdin is empty/],
    ['a JSON array', '[]', ErrorCode.DecodingFailure, /JSON object/],
    ['JSON null', 'null', ErrorCode.DecodingFailure, /JSON object/],
    ['a JSON string', '"1.1.0"', ErrorCode.DecodingFailure, /JSON object/],
  ])('%s → code %i', (_label, stdin, code, msg) => {
    expectCniError(() => parseRequest({ env: ADD_ENV, stdin }), code, msg);
  });

  it.each([
    ['missing', undefined],
    ['empty', ''],
    ['null', null],
  ])('cniVersion %s is 0.1.0, as skel reads it', (_label, cniVersion) => {
    expect(parseRequest(withConf({ cniVersion })).cniVersion).toBe('0.1.0');
  });

  it.each([
    ['a number', 1.1, ErrorCode.InvalidNetworkConfig],
    ['not a version', 'latest', ErrorCode.InvalidNetworkConfig],
    ['two parts', '1.1', ErrorCode.InvalidNetworkConfig],
    ['a pre-release', '1.1.0-rc1', ErrorCode.InvalidNetworkConfig],
    ['unsupported', '9.9.9', ErrorCode.IncompatibleCniVersion],
    ['unsupported between known ones', '0.5.0', ErrorCode.IncompatibleCniVersion],
  ])('cniVersion %s → code %i', (_label, cniVersion, code) => {
    expectCniError(() => parseRequest(withConf({ cniVersion })), code, /cniVersion|CNI versions/);
  });

  it('an unsupported cniVersion lists the supported versions in details', () => {
    const err = expectCniError(
      () => parseRequest(withConf({ cniVersion: '9.9.9' })),
      ErrorCode.IncompatibleCniVersion,
    );
    expect(err.details).toBe(`config is "9.9.9", plugin supports ${JSON.stringify(SUPPORTED_VERSIONS)}`);
  });

  it.each([
    ['missing', undefined],
    ['empty', ''],
    ['a path upwards', '../x'],
    ['a path', 'a/b'],
    ['hidden', '.net'],
    ['with a space', 'my net'],
    ['a number', 5],
  ])('network name %s → code 7', (_label, name) => {
    expectCniError(() => parseRequest(withConf({ name })), ErrorCode.InvalidNetworkConfig, /name/);
  });

  it.each([
    ['missing', undefined],
    ['empty', ''],
    ['a path', '../bin/bridge'],
  ])('plugin type %s → code 7', (_label, type) => {
    expectCniError(() => parseRequest(withConf({ type })), ErrorCode.InvalidNetworkConfig, /type/);
  });

  it('reads null prevResult, runtimeConfig and args as absent, as Go does', () => {
    const r = parseRequest(withConf({ prevResult: null, runtimeConfig: null, args: null }));
    expect(r.prevResult).toBeUndefined();
    expect(r.runtimeConfig('portMappings')).toBeUndefined();
    expect(r.args).toEqual({});
    expect(parseRequest(withConf({ args: { cni: null } })).args).toEqual({});
  });

  it('accepts names with the full charset', () => {
    expect(parseRequest(withConf({ name: 'My-net_1.2' })).config.name).toBe('My-net_1.2');
  });

  it.each([
    ['CHECK', '0.3.1', false],
    ['CHECK', '0.4.0', true],
    ['GC', '1.0.0', false],
    ['GC', '1.1.0', true],
    ['STATUS', '0.4.0', false],
    ['STATUS', '1.1.0', true],
    ['ADD', '0.1.0', true],
    ['DEL', '0.2.0', true],
  ])('%s with cniVersion %s allowed: %s', (command, cniVersion, allowed) => {
    const input = withConf({ cniVersion }, { ...ADD_ENV, CNI_COMMAND: command });
    if (allowed) expect(parseRequest(input).command).toBe(command);
    else
      expectCniError(() => parseRequest(input), ErrorCode.IncompatibleCniVersion, new RegExp(`"${command}"`));
  });

  it('tolerates reserved and plugin-specific keys and keeps them in config', () => {
    const extras = {
      capabilities: { portMappings: true },
      'cni.dev/valid-attachments': [],
      'cni.dev/something-new': { x: 1 },
      runtimeConfig: { portMappings: [] },
      args: { cni: { ips: ['198.18.0.7/24'] }, other: true },
      bridge: 'bt0',
      ipam: { type: 'berth-ipam' },
    };
    const req = parseRequest(withConf(extras));
    expect(req.config).toEqual({ ...CONF, ...extras });
    expect(req.args).toEqual({ ips: ['198.18.0.7/24'] });
  });

  it('args.cni defaults to {}; a non-object args or args.cni → code 7', () => {
    expect(parseRequest(withConf({})).args).toEqual({});
    expect(parseRequest(withConf({ args: {} })).args).toEqual({});
    expectCniError(() => parseRequest(withConf({ args: 'x' })), ErrorCode.InvalidNetworkConfig, /args/);
    expectCniError(
      () => parseRequest(withConf({ args: { cni: [1] } })),
      ErrorCode.InvalidNetworkConfig,
      /args\.cni/,
    );
  });
});

describe('runtimeConfig', () => {
  const containerd = [{ HostPort: 8080, ContainerPort: 80, Protocol: 'tcp', HostIP: '' }];

  it('looks keys up ignoring case', () => {
    const req = parseRequest(
      withConf({ runtimeConfig: { PortMappings: containerd, mac: 'c2:11:22:33:44:55' } }),
    );
    expect(req.runtimeConfig('portMappings')).toEqual(containerd);
    expect(req.runtimeConfig('PORTMAPPINGS')).toEqual(containerd);
    expect(req.runtimeConfig('MAC')).toBe('c2:11:22:33:44:55');
    expect(req.runtimeConfig('bandwidth')).toBeUndefined();
  });

  it('prefers the exact key when both spellings are present', () => {
    const req = parseRequest(withConf({ runtimeConfig: { HostPort: 1, hostPort: 2 } }));
    expect(req.runtimeConfig('hostPort')).toBe(2);
    expect(req.runtimeConfig('HostPort')).toBe(1);
  });

  it('helps with nested capitalised entries too', () => {
    const entry = containerd[0] ?? {};
    expect(caseInsensitiveGet(entry, 'hostPort')).toBe(8080);
    expect(caseInsensitiveGet(entry, 'hostIP')).toBe('');
  });

  it('answers undefined without runtimeConfig; a non-object one → code 7', () => {
    expect(parseRequest(withConf({})).runtimeConfig('portMappings')).toBeUndefined();
    expectCniError(
      () => parseRequest(withConf({ runtimeConfig: [] })),
      ErrorCode.InvalidNetworkConfig,
      /runtimeConfig/,
    );
  });
});

describe('prevResult', () => {
  const prev040 = {
    cniVersion: '0.4.0',
    interfaces: [{ name: 'eth0', sandbox: '/run/netns/bt-x' }],
    ips: [{ version: '4', interface: 0, address: '198.18.0.5/24', gateway: '198.18.0.1' }],
  };

  it('is converted to the internal model', () => {
    const req = parseRequest(
      withConf({ cniVersion: '0.4.0', prevResult: prev040 }, { ...ADD_ENV, CNI_COMMAND: 'CHECK' }),
    );
    expect(req.prevResult).toEqual({
      cniVersion: '1.1.0',
      interfaces: [{ name: 'eth0', sandbox: '/run/netns/bt-x' }],
      ips: [{ interface: 0, address: '198.18.0.5/24', gateway: '198.18.0.1' }],
    });
  });

  it('without its own cniVersion is read in the config version (0.2.0 shape)', () => {
    const prevResult = {
      ip4: { ip: '198.18.0.5/24', gateway: '198.18.0.1', routes: [{ dst: '0.0.0.0/0' }] },
    };
    const req = parseRequest(withConf({ cniVersion: '0.2.0', prevResult }));
    expect(req.prevResult).toEqual({
      cniVersion: '1.1.0',
      ips: [{ address: '198.18.0.5/24', gateway: '198.18.0.1' }],
      routes: [{ dst: '0.0.0.0/0' }],
    });
  });

  it('without its own cniVersion in a 1.1.0 config keeps the 1.1 fields', () => {
    const prevResult = {
      interfaces: [{ name: 'eth0', mtu: 1400 }],
      routes: [{ dst: '0.0.0.0/0', table: 100 }],
    };
    expect(parseRequest(withConf({ prevResult })).prevResult).toEqual({ cniVersion: '1.1.0', ...prevResult });
  });

  it('that cannot be read does not stop a DEL (best effort): it goes on without, saying why', () => {
    const bad = { cniVersion: '1.1.0', ips: [{ interface: '0', address: '198.18.0.5/24' }] };
    const del = parseRequest(withConf({ prevResult: bad }, { ...ADD_ENV, CNI_COMMAND: 'DEL' }));
    expect(del.prevResult).toBeUndefined();
    expect(del.ignoredPrevResult).toMatch(/prevResult.*interface/);
    expectCniError(() => parseRequest(withConf({ prevResult: bad })), ErrorCode.DecodingFailure, /interface/);
  });

  it('that is malformed fails naming prevResult', () => {
    expectCniError(
      () => parseRequest(withConf({ prevResult: { ips: [{ gateway: '198.18.0.1' }] } })),
      ErrorCode.DecodingFailure,
      /prevResult.*ips\[0\]\.address: missing/,
    );
    expectCniError(
      () => parseRequest(withConf({ prevResult: 'x' })),
      ErrorCode.InvalidNetworkConfig,
      /prevResult/,
    );
  });
});

describe('GC attachments', () => {
  const gcEnv = { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' };
  const list = [
    { containerID: 'ctr1', ifname: 'eth0' },
    { containerID: 'ctr2', ifname: 'net1' },
  ];

  it.each(['cni.dev/valid-attachments', 'cni.dev/attachments'])('reads %s', (key) => {
    expect(parseRequest(withConf({ [key]: list }, gcEnv)).validAttachments).toEqual(list);
  });

  it('prefers the current key over the legacy one', () => {
    const req = parseRequest(
      withConf({ 'cni.dev/valid-attachments': list.slice(0, 1), 'cni.dev/attachments': list }, gcEnv),
    );
    expect(req.validAttachments).toEqual(list.slice(0, 1));
  });

  it('treats a missing list as "nothing is valid"', () => {
    expect(parseRequest(withConf({}, gcEnv)).validAttachments).toEqual([]);
  });

  it('treats a null list as empty, as Go does (libcni writes a nil slice as null: CRI-O, no live pod)', () => {
    expect(parseRequest(withConf({ 'cni.dev/valid-attachments': null }, gcEnv)).validAttachments).toEqual([]);
    // A null current key does not hide the legacy one.
    const both = { 'cni.dev/valid-attachments': null, 'cni.dev/attachments': list };
    expect(parseRequest(withConf(both, gcEnv)).validAttachments).toEqual(list);
  });

  it.each([
    ['not an array', { x: 1 }],
    ['entries without ifname', [{ containerID: 'ctr1' }]],
    ['entries that are strings', ['ctr1']],
  ])('refuses a list that is %s (code 7)', (_label, value) => {
    expectCniError(
      () => parseRequest(withConf({ 'cni.dev/valid-attachments': value }, gcEnv)),
      ErrorCode.InvalidNetworkConfig,
      /valid-attachments/,
    );
  });
});

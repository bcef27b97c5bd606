#!/usr/bin/env node
// `npm run package`: builds out/berth, one self-contained executable (Node's single-executable support:
// the bundled JavaScript, a V8 code cache and the two native addons as assets, injected into a copy of
// this node binary), plus out/berth-shim (the warm path's C client) with the hard links out/berth-bridge and
// out/berth-ipam. Run after `npm run build`.
//
//   options: --out DIR    write there instead of out/ (tests build into their own temp dir)
//            --no-strip   keep node's debug symbols (strip(1) removes ~12 MB and is used when found)
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const repo = path.resolve(__dirname, '..');
const argv = process.argv.slice(2);
const outIndex = argv.indexOf('--out');
const out = path.resolve(
  outIndex >= 0 && argv[outIndex + 1] !== undefined ? argv[outIndex + 1] : path.join(repo, 'out'),
);
const work = path.join(out, 'sea');
const args = new Set(argv);
// The fuse Node's SEA loader looks for (documented in Node's single-executable-applications page).
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
const PROGRAMS = ['berth', 'berth-bridge', 'berth-ipam'];

function log(msg) {
  process.stderr.write(`package: ${msg}\n`);
}

function fail(msg) {
  log(msg);
  process.exit(1);
}

function sha256(file) {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function git(...argv) {
  try {
    return execFileSync('git', argv, {
      cwd: repo,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return undefined;
  }
}

/** The build named in `berth --version`: commit, plus "-dirty" when tracked files differ from it. */
function buildId() {
  const commit = git('rev-parse', '--short=12', 'HEAD');
  if (commit === undefined) return 'unknown';
  const dirty = git('status', '--porcelain', '--untracked-files=no');
  return dirty ? `${commit}-dirty` : commit;
}

/** The .node files the executable embeds, found where the non-packaged program loads them from. */
function nativeAddons() {
  const berthNative = path.join(repo, 'native', 'build', 'Release', 'berth_native.node');
  if (!fs.existsSync(berthNative)) fail(`${berthNative} missing: run \`npm run build\` first`);
  // netlink loads its addon through node-gyp-build; ask it which file it would pick on this machine.
  const netlinkDir = path.dirname(require.resolve('netlink/package.json', { paths: [repo] }));
  const gypBuild = require(require.resolve('node-gyp-build', { paths: [netlinkDir] }));
  return { berth_native: berthNative, netlink: gypBuild.path(netlinkDir) };
}

const dist = path.join(repo, 'dist');

/**
 * Where the bundle is cut (ids are paths below dist/ without .js): the modules the sources already
 * require lazily. Each becomes a part loaded on first require (src/sea/chunks.ts); everything else that
 * the main script reaches stays in it.
 */
const CHUNKS = [
  'bridge/plugin',
  'bridge/deps',
  'bridge/kernel',
  'bridge/lock',
  'bridge/add',
  'bridge/del',
  'bridge/check',
  'bridge/gc-status',
  'ipam/plugin',
  'cli/main',
];
/**
 * Rooms kept in the main script whole, whoever uses them: cni-spec is the contract between the
 * dispatcher and the handlers (one CniError class), and every plugin start runs it; address is the
 * vocabulary every room shares (bridge/add and the kernel room's parts would otherwise both hold it).
 */
const SHARED_ROOMS = ['cni-spec', 'address'];

function distId(file) {
  const rel = path.relative(dist, file);
  return rel.startsWith('..') || !rel.endsWith('.js') ? undefined : rel.slice(0, -3);
}

/** Resolves a relative require as Node would (file, file.js, dir/index.js); undefined for anything else. */
function resolveRelative(spec, dir) {
  if (!spec.startsWith('./') && !spec.startsWith('../')) return undefined;
  const base = path.resolve(dir, spec);
  return [base, `${base}.js`, path.join(base, 'index.js')].find(
    (f) => fs.existsSync(f) && fs.statSync(f).isFile(),
  );
}

/**
 * One esbuild run. `core` (ids of the main script's modules) and `chunks` become external `berth-core:` /
 * `berth-chunk:` requires, served at run time by src/sea/chunks.ts; node-gyp-build becomes our shim that
 * serves netlink's addon from the embedded asset.
 */
async function bundle({ entry, outfile, core, chunks, banner, footer }) {
  const esbuild = require('esbuild');
  const shim = path.join(dist, 'sea', 'node-gyp-build.js');
  const result = await esbuild.build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    // tsc's CommonJS output keeps each `require('./x')` where the source wrote it, and esbuild wraps every
    // CommonJS module in a function run on first require: module bodies still run only when needed.
    minifyWhitespace: true,
    minifySyntax: true,
    legalComments: 'none',
    metafile: true,
    logLevel: 'warning',
    logOverride: { 'unsupported-require-call': 'silent' }, // native-addon.ts's require(candidate), unused in the SEA
    ...(banner !== undefined ? { banner: { js: banner }, footer: { js: footer } } : {}),
    plugins: [
      {
        name: 'berth-sea',
        setup(build) {
          build.onResolve({ filter: /^node-gyp-build$/ }, () => ({ path: shim }));
          build.onResolve({ filter: /^\.\.?\// }, (args) => {
            const file = resolveRelative(args.path, args.resolveDir);
            const id = file === undefined ? undefined : distId(file);
            if (id === undefined || file === entry) return undefined;
            if (chunks.has(id)) return { path: `berth-chunk:${id}`, external: true };
            if (core.has(id)) return { path: `berth-core:${id}`, external: true };
            return undefined;
          });
        },
      },
    ],
  });
  return result.metafile;
}

/**
 * Builds the main script and the parts. Two passes for the main script: the first finds which modules it
 * holds, the second adds a table of them (lazy factories) that the parts require through.
 */
async function bundleAll() {
  const chunks = new Set(CHUNKS);
  for (const id of chunks)
    if (!fs.existsSync(path.join(dist, `${id}.js`)))
      fail(`dist/${id}.js missing (scripts/package.js CHUNKS is stale?)`);
  const entry = path.join(dist, 'sea', 'entry.js');
  const first = await bundle({ entry, outfile: path.join(work, 'probe.js'), core: new Set(), chunks });
  fs.rmSync(path.join(work, 'probe.js'));
  const coreIds = Object.keys(first.inputs)
    .map((i) => distId(path.resolve(repo, i)))
    .filter((id) => id !== undefined);
  coreIds.push('sea/chunks');
  for (const room of SHARED_ROOMS) {
    for (const f of fs.readdirSync(path.join(dist, room), { recursive: true })) {
      if (String(f).endsWith('.js')) coreIds.push(distId(path.join(dist, room, String(f))));
    }
  }

  // The generated entry: the parts' loader first, then berth's own entry.
  const req = (id) => `require(${JSON.stringify(path.join(dist, `${id}.js`))})`;
  const coreEntry = path.join(work, 'core-entry.js');
  fs.writeFileSync(
    coreEntry,
    [
      "'use strict';",
      "const sea = require('node:sea');",
      `__berthChunkRequire = ${req('sea/chunks')}.createChunkRequire({`,
      `  core: {\n${coreIds.map((id) => `    ${JSON.stringify(id)}: () => ${req(id)},`).join('\n')}\n  },`,
      '  builtin: (id) => require(id),',
      "  source: (name) => sea.getAsset(name, 'utf8'),",
      '  bytes: (name) => new Uint8Array(sea.getRawAsset(name)),',
      '});',
      `${req('sea/entry')};`,
      '',
    ].join('\n'),
  );
  // The program's own require() only knows built-ins (the single executable's, handed on by the
  // bootstrap); the bundle's require (a parameter of this wrapper) sends berth-chunk: ids to the parts' loader.
  const banner = 'var __berthChunkRequire;(function (require) {';
  const footer = '})((r => id => id.startsWith("berth-") ? __berthChunkRequire(id) : r(id))(require));';
  const coreFile = path.join(work, 'chunk', 'core.js');
  const metafiles = [
    await bundle({ entry: coreEntry, outfile: coreFile, core: new Set(), chunks, banner, footer }),
  ];
  // The executable's main script: compiles the bundle above with its code cache.
  const mainFile = path.join(work, 'berth.js');
  metafiles.push(
    await bundle({
      entry: path.join(dist, 'sea', 'bootstrap.js'),
      outfile: mainFile,
      core: new Set(),
      chunks: new Set(),
    }),
  );

  const { CHUNK_PREFIX, CHUNK_SUFFIX, chunkAssets } = require(path.join(dist, 'sea', 'chunks.js'));
  const { Script } = require('node:vm');
  const parts = [];
  const core = new Set(coreIds);
  const compileCache = (id, file) => {
    // A cache of compiling only; scripts/sea/train.js replaces those of the scripts a VERSION start runs.
    const cacheFile = file.replace(/\.js$/, '.cache');
    const source = fs.readFileSync(file, 'utf8');
    fs.writeFileSync(
      cacheFile,
      new Script(`${CHUNK_PREFIX}${source}${CHUNK_SUFFIX}`, {
        filename: `berth:${id}.js`,
      }).createCachedData(),
    );
    const names = chunkAssets(id);
    return { id, size: source.length, assets: { [names.source]: file, [names.cache]: cacheFile } };
  };
  parts.push(compileCache('core', coreFile));
  const held = new Map(); // chunk id -> the dist modules its part holds
  const loads = new Map(); // chunk id -> the parts it requires
  for (const id of chunks) {
    const outfile = path.join(work, 'chunk', `${id}.js`);
    const metafile = await bundle({ entry: path.join(dist, `${id}.js`), outfile, core, chunks });
    metafiles.push(metafile);
    held.set(
      id,
      new Set(
        Object.keys(metafile.inputs)
          .map((i) => distId(path.resolve(repo, i)))
          .filter((m) => m !== undefined),
      ),
    );
    loads.set(
      id,
      Object.values(metafile.outputs).flatMap((o) =>
        o.imports.filter((i) => i.path.startsWith('berth-chunk:')).map((i) => i.path.slice(12)),
      ),
    );
    // The code cache is made by this same node binary, so the executable's V8 accepts it.
    parts.push(compileCache(id, outfile));
  }
  // A part and a part it loads run in one process: a module in both would exist twice (two classes, two
  // caches). Such a module belongs in SHARED_ROOMS or in a part of its own.
  for (const [parent, children] of loads) {
    for (const child of children) {
      const both = [...held.get(parent)].filter((m) => held.get(child).has(m));
      if (both.length > 0)
        fail(`parts ${parent} and ${child} (loaded together) both hold ${both.join(', ')}`);
    }
  }
  return { mainFile, metafiles, parts };
}

/** The bundles must hold what berth runs and nothing unexpected (node-gyp-build, for one, must be gone). */
function checkInputs(metafiles) {
  const inputs = new Set(metafiles.flatMap((m) => Object.keys(m.inputs)));
  const packages = new Set(
    [...inputs]
      .filter((i) => i.includes('node_modules/'))
      .map((i) => i.replace(/^.*node_modules\/((@[^/]+\/)?[^/]+).*$/, '$1')),
  );
  const allowed = new Set(['netlink', 'commander']);
  const unexpected = [...packages].filter((p) => !allowed.has(p));
  if (unexpected.length > 0) fail(`bundle pulls in unexpected packages: ${unexpected.join(', ')}`);
  return { modules: inputs.size, packages: [...packages].sort() };
}

/** Which scripts each training start leaves warm caches for (scripts/sea/train.js). */
const TRAINING = [
  { program: 'berth-bridge', ids: ['core', 'bridge/plugin'] },
  { program: 'berth-ipam', ids: ['ipam/plugin'] },
];

function train(assets, bootstrap) {
  const assetsFile = path.join(work, 'assets.json');
  fs.writeFileSync(assetsFile, JSON.stringify(assets));
  for (const { program, ids } of TRAINING) {
    const run = spawnSync(
      process.execPath,
      [path.join(__dirname, 'sea', 'train.js'), assetsFile, bootstrap, program, ...ids],
      {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_COMMAND: 'VERSION' },
        stdio: ['ignore', 'pipe', 'pipe'],
        encoding: 'utf8',
      },
    );
    let answer;
    try {
      answer = JSON.parse(run.stdout);
    } catch {
      answer = undefined;
    }
    if (run.status !== 0 || !Array.isArray(answer?.supportedVersions)) {
      fail(`training start of ${program} failed (exit ${run.status}):\n${run.stdout}${run.stderr}`);
    }
  }
  log(
    `warm code caches from VERSION starts: ${TRAINING.map((t) => `${t.program} (${t.ids.join(', ')})`).join('; ')}`,
  );
}

async function main() {
  if (!fs.existsSync(path.join(repo, 'dist', 'sea', 'entry.js')))
    fail('dist/sea/entry.js missing: run `npm run build` first');
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });

  const { mainFile: bundleFile, metafiles, parts } = await bundleAll();
  const { modules, packages } = checkInputs(metafiles);
  log(
    `bundled ${modules} modules (packages: ${packages.join(', ')}): bootstrap ${fs.statSync(bundleFile).size} bytes; ` +
      `parts: ${parts.map((p) => `${p.id} ${p.size}`).join(', ')}`,
  );

  const pkg = JSON.parse(fs.readFileSync(path.join(repo, 'package.json'), 'utf8'));
  const build = {
    version: pkg.version,
    commit: buildId(),
    builtAt: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  };
  fs.writeFileSync(path.join(work, 'build.json'), JSON.stringify(build));

  const addons = nativeAddons();
  const manifest = { addons: {} };
  const assets = {
    'berth/build.json': path.join(work, 'build.json'),
    'berth/manifest.json': path.join(work, 'manifest.json'),
  };
  for (const [name, file] of Object.entries(addons)) {
    const asset = `berth/native/${name}.node`;
    manifest.addons[name] = { asset, sha256: sha256(file) };
    assets[asset] = file;
    log(`embedding ${path.relative(repo, file)} as ${asset}`);
  }
  fs.writeFileSync(path.join(work, 'manifest.json'), JSON.stringify(manifest));
  for (const part of parts) Object.assign(assets, part.assets);
  train(assets, bundleFile);

  const blob = path.join(work, 'sea-prep.blob');
  const seaConfig = {
    main: bundleFile,
    output: blob,
    disableExperimentalSEAWarning: true,
    // Measured in bench/startup: the code cache saves ~4 ms of CPU per start; useSnapshot (which needs a
    // different entry, since a snapshot cannot hold the native addons) measured no better than the cache.
    useCodeCache: true,
    assets,
  };
  const configFile = path.join(work, 'sea-config.json');
  fs.writeFileSync(configFile, `${JSON.stringify(seaConfig, null, 2)}\n`);
  const prepared = spawnSync(process.execPath, ['--experimental-sea-config', configFile], {
    cwd: work,
    encoding: 'utf8',
  });
  if (prepared.status !== 0)
    fail(`node --experimental-sea-config failed:\n${prepared.stdout}${prepared.stderr}`);
  log(`SEA blob with code cache and ${Object.keys(assets).length} assets: ${fs.statSync(blob).size} bytes`);

  // A copy of the running node, stripped when possible, receives the blob; the result is renamed into place
  // so a half-written executable never sits at out/berth.
  const exe = path.join(out, 'berth');
  const tmp = path.join(out, `.berth.${process.pid}.tmp`);
  fs.copyFileSync(process.execPath, tmp);
  fs.chmodSync(tmp, 0o755);
  if (!args.has('--no-strip')) {
    try {
      execFileSync('strip', [tmp], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (err) {
      log(`strip unavailable or failed (${err.code ?? err.status}): keeping the symbols`);
    }
  }
  // postject's ELF library warns about every unnamed note section of node's binary; those lines are noise.
  const postject = require.resolve('postject/dist/cli.js', { paths: [repo] });
  const injected = spawnSync(
    process.execPath,
    [postject, tmp, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE],
    {
      encoding: 'utf8',
    },
  );
  const noise =
    /^warning: Can't find string offset for section name '\.note[^']*'$|Start injection|Injection done|^\s*$/;
  for (const line of `${injected.stdout}\n${injected.stderr}`.split('\n'))
    // eslint-disable-next-line no-control-regex -- strips the terminal colour codes postject prints
    if (!noise.test(line.replace(/\u001b\[[0-9;]*m/g, ''))) log(`postject: ${line}`);
  if (injected.status !== 0) fail(`postject failed (exit ${injected.status})`);
  fs.renameSync(tmp, exe);
  // The plugins are berth-shim (native/shim): it forwards each call to berthd and, without one, runs this
  // executable under the plugin's name. Copied as a file of its own, the plugins hard links to it.
  const shimSource = path.join(repo, 'native', 'shim', 'build', 'berth-shim');
  if (!fs.existsSync(shimSource)) fail(`${shimSource} missing: run \`npm run build\` (build:shim) first`);
  const shim = path.join(out, 'berth-shim');
  const shimTmp = path.join(out, `.berth-shim.${process.pid}.tmp`);
  fs.copyFileSync(shimSource, shimTmp);
  fs.chmodSync(shimTmp, 0o755);
  fs.renameSync(shimTmp, shim);
  for (const name of PROGRAMS.slice(1)) {
    const link = path.join(out, name);
    fs.rmSync(link, { force: true });
    fs.linkSync(shim, link);
  }

  const version = execFileSync(exe, ['--version'], {
    encoding: 'utf8',
    env: { PATH: '/usr/bin:/bin' },
  }).trim();
  log(
    `${exe}: ${fs.statSync(exe).size} bytes; ${shim} (${fs.statSync(shim).size} bytes) with hard links ` +
      `${PROGRAMS.slice(1).join(', ')}; ${version}`,
  );
}

main().catch((err) => fail(err.stack ?? String(err)));

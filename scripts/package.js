#!/usr/bin/env node
// `npm run package`: builds out/berth, one self-contained executable (Node's single-executable support:
// the bundled JavaScript, a V8 code cache and the two native addons as assets, injected into a copy of
// this node binary), plus the hard links out/berth-bridge and out/berth-ipam. Run after `npm run build`.
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
const out = path.resolve(outIndex >= 0 && argv[outIndex + 1] !== undefined ? argv[outIndex + 1] : path.join(repo, 'out'));
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
    return execFileSync('git', argv, { cwd: repo, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
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

async function bundle(entry, outfile) {
  const esbuild = require('esbuild');
  const shim = path.join(repo, 'dist', 'sea', 'node-gyp-build.js');
  const result = await esbuild.build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    // tsc's CommonJS output keeps each `require('./bridge/plugin')` where main.ts wrote it, and esbuild
    // wraps every CommonJS module in a function run on first require: the plugin path still loads only
    // its own modules (commander's body never runs for a plugin).
    minifyWhitespace: true,
    minifySyntax: true,
    legalComments: 'none',
    metafile: true,
    logLevel: 'warning',
    logOverride: { 'unsupported-require-call': 'silent' }, // native-addon.ts's require(candidate), unused in the SEA
    plugins: [
      {
        name: 'berth-sea-node-gyp-build',
        setup(build) {
          build.onResolve({ filter: /^node-gyp-build$/ }, () => ({ path: shim }));
        },
      },
    ],
  });
  return result.metafile;
}

/** The bundle must hold what the plugins run and nothing unexpected; node-gyp-build itself must be gone. */
function checkInputs(metafile) {
  const inputs = Object.keys(metafile.inputs);
  const packages = new Set(
    inputs.filter((i) => i.includes('node_modules/')).map((i) => i.replace(/^.*node_modules\/((@[^/]+\/)?[^/]+).*$/, '$1')),
  );
  const allowed = new Set(['netlink', 'ip-address', 'commander']);
  const unexpected = [...packages].filter((p) => !allowed.has(p));
  if (unexpected.length > 0) fail(`bundle pulls in unexpected packages: ${unexpected.join(', ')}`);
  return { modules: inputs.length, packages: [...packages].sort() };
}

async function main() {
  if (!fs.existsSync(path.join(repo, 'dist', 'sea', 'entry.js'))) fail('dist/sea/entry.js missing: run `npm run build` first');
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });

  const bundleFile = path.join(work, 'berth.js');
  const metafile = await bundle(path.join(repo, 'dist', 'sea', 'entry.js'), bundleFile);
  const { modules, packages } = checkInputs(metafile);
  log(`bundled ${modules} modules (packages: ${packages.join(', ')}) into ${fs.statSync(bundleFile).size} bytes`);

  const pkg = JSON.parse(fs.readFileSync(path.join(repo, 'package.json'), 'utf8'));
  const build = { version: pkg.version, commit: buildId(), builtAt: new Date().toISOString().replace(/\.\d+Z$/, 'Z') };
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
  const prepared = spawnSync(process.execPath, ['--experimental-sea-config', configFile], { cwd: work, encoding: 'utf8' });
  if (prepared.status !== 0) fail(`node --experimental-sea-config failed:\n${prepared.stdout}${prepared.stderr}`);
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
  const injected = spawnSync(process.execPath, [postject, tmp, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE], {
    encoding: 'utf8',
  });
  const noise = /^warning: Can't find string offset for section name '\.note[^']*'$|Start injection|Injection done|^\s*$/;
  for (const line of `${injected.stdout}\n${injected.stderr}`.split('\n')) if (!noise.test(line.replace(/\x1b\[[0-9;]*m/g, ''))) log(`postject: ${line}`);
  if (injected.status !== 0) fail(`postject failed (exit ${injected.status})`);
  fs.renameSync(tmp, exe);
  for (const name of PROGRAMS.slice(1)) {
    const link = path.join(out, name);
    fs.rmSync(link, { force: true });
    fs.linkSync(exe, link);
  }

  const version = execFileSync(exe, ['--version'], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } }).trim();
  log(`${exe}: ${fs.statSync(exe).size} bytes, hard links ${PROGRAMS.slice(1).join(', ')}; ${version}`);
}

main().catch((err) => fail(err.stack ?? String(err)));

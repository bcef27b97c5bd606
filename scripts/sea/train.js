#!/usr/bin/env node
// Makes "warm" code caches for the single executable (run by scripts/package.js, one process per program):
// runs the bundled bootstrap as the executable would, with node:sea served from the files about to be
// embedded, for one `CNI_COMMAND=VERSION` start, then writes the V8 code cache of the scripts named on the
// command line. A cache made after running holds the functions that ran, not only the top level.
//   node scripts/sea/train.js ASSETS_JSON BOOTSTRAP_JS PROGRAM ID...
'use strict';
const fs = require('node:fs');
const vm = require('node:vm');

const [assetsFile, bootstrapFile, program, ...ids] = process.argv.slice(2);
const assets = JSON.parse(fs.readFileSync(assetsFile, 'utf8'));
const read = (name) => {
  if (assets[name] === undefined) throw new Error(`train.js: no asset ${name}`);
  return fs.readFileSync(assets[name]);
};
const sea = {
  isSea: () => true,
  getAsset: (name, encoding) => {
    const bytes = read(name);
    return encoding === undefined
      ? bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)
      : bytes.toString(encoding);
  },
  getRawAsset: (name) => sea.getAsset(name),
};

// Every script berth compiles is named berth:<id>.js; keep them to take their caches at exit.
const compiled = new Map();
class RecordingScript extends vm.Script {
  constructor(source, options = {}) {
    // eslint-disable-next-line no-unused-vars -- taken out so the script compiles without a cache
    const { cachedData, ...rest } = options;
    super(source, rest);
    const m = /^berth:(.*)\.js$/.exec(options.filename ?? '');
    if (m !== null) compiled.set(m[1], this);
  }
}
const builtin = (id) => {
  if (id === 'node:sea') return sea;
  if (id === 'node:vm' || id === 'vm') return { ...vm, Script: RecordingScript };
  return require(id);
};

process.on('exit', () => {
  for (const id of ids) {
    const script = compiled.get(id);
    if (script === undefined) {
      process.stderr.write(`train.js: ${program} never compiled ${id}\n`);
      process.exitCode = 1;
      continue;
    }
    fs.writeFileSync(assets[`berth/chunk/${id}.cache`], script.createCachedData());
  }
});

process.argv = [process.execPath, program];
const module_ = { exports: {} };
new vm.Script(
  `(function (exports, require, module, __filename, __dirname) {${fs.readFileSync(bootstrapFile, 'utf8')}\n})`,
  {
    filename: 'bootstrap.js',
  },
).runInThisContext()(module_.exports, builtin, module_, program, '/');

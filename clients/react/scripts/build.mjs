// Builds @roomcast/react.
//
//   node scripts/build.mjs          sync + library + example
//   node scripts/build.mjs --sync   only copy the browser client into src/
//   node scripts/build.mjs --lib    sync + library (what `npm pack` needs)
//
// 1. sync: copies the repository's browser client (src/web/client.js, the
//    entry module the server serves at /client.js, and src/web/client/*.js,
//    the modules it imports, served at /client/*.js) to src/client.js and
//    src/client/, byte for byte: the package wraps it and never
//    reimplements the protocol. Outside the repository (a tarball being
//    repacked) the copy already there is used.
// 2. library: each src/*.ts is compiled to dist/*.js by esbuild (ES modules,
//    React left as an import, each file opening with "use client": the hooks
//    and the provider run in the browser, and a Next.js App Router server
//    component may import them), src/client.js and src/client/ are copied
//    to dist/ unchanged,
//    CommonJS bundles for `require` (dist/index.cjs, dist/client.cjs: Jest,
//    older bundlers) are written beside them, and tsc writes the
//    declarations (dist/*.d.ts, client.d.ts from its JSDoc; the members
//    the client's modules mark @internal are then cut from dist/client/).
// 3. example: example/main.tsx bundled with React by esbuild into
//    example/dist/app.js (production React) and example/dist/app.dev.js
//    (development React: StrictMode's double render and double effects are
//    live), with example/index.html beside them.

import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const ts = createRequire(import.meta.url)('typescript');

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const upstream = resolve(root, '../../src/web');
const copy = join(root, 'src/client.js');
const args = new Set(process.argv.slice(2));

/** The browser client's files under `dir`: client.js and client/*.js. */
function clientFiles(dir) {
  const modules = readdirSync(join(dir, 'client')).filter((f) => f.endsWith('.js')).sort();
  return ['client.js', ...modules.map((f) => `client/${f}`)];
}

function sync() {
  if (existsSync(join(upstream, 'client.js'))) {
    rmSync(join(root, 'src/client'), { recursive: true, force: true });
    mkdirSync(join(root, 'src/client'), { recursive: true });
    for (const f of clientFiles(upstream)) copyFileSync(join(upstream, f), join(root, 'src', f));
    for (const f of clientFiles(upstream)) {
      if (!readFileSync(join(upstream, f)).equals(readFileSync(join(root, 'src', f)))) {
        throw new Error(`src/${f} differs from src/web/${f} after the copy`);
      }
    }
  } else if (!existsSync(copy)) {
    throw new Error(`neither ${upstream}/client.js nor ${copy} exists: build from the roomcast repository`);
  }
}

async function lib() {
  const dist = join(root, 'dist');
  rmSync(dist, { recursive: true, force: true });
  mkdirSync(dist, { recursive: true });
  const entries = readdirSync(join(root, 'src'))
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .map((f) => join(root, 'src', f));
  await esbuild.build({
    entryPoints: entries,
    outdir: dist,
    format: 'esm',
    platform: 'neutral',
    target: 'es2020',
    bundle: false,
    banner: { js: "'use client';" },
    logLevel: 'warning',
  });
  mkdirSync(join(dist, 'client'), { recursive: true });
  for (const f of clientFiles(join(root, 'src'))) copyFileSync(join(root, 'src', f), join(dist, f));
  // CommonJS, for `require`: one bundle per entry (the browser client
  // inside, React left as a require).
  const cjs = {
    bundle: true,
    format: 'cjs',
    platform: 'neutral',
    target: 'es2020',
    external: ['react', 'react/*'],
    logLevel: 'warning',
  };
  await esbuild.build({ ...cjs, entryPoints: [join(root, 'src/index.ts')], outfile: join(dist, 'index.cjs'), banner: { js: "'use client';" } });
  await esbuild.build({ ...cjs, entryPoints: [copy], outfile: join(dist, 'client.cjs') });
  const tsc = join(root, 'node_modules/typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit', cwd: root });
  stripInternal(join(dist, 'client'));
}

/**
 * Removes the members marked `@internal` from the browser client's
 * declarations. The client's modules share some fields and methods with
 * each other and mark them `@internal`. tsc's `stripInternal` skips
 * declarations emitted from JavaScript, so without this step they would
 * show up in the package's public types.
 */
function stripInternal(dir) {
  const internal = (node) => ts.getJSDocTags(node).some((t) => t.tagName.text === 'internal');
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.d.ts'))) {
    const path = join(dir, f);
    const text = readFileSync(path, 'utf8');
    const source = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
    // Ranges of the marked members (class members and type members), their
    // leading comments and indentation included, cut from the text so
    // everything else stays byte for byte as tsc wrote it.
    const cuts = [];
    const visit = (node) => {
      if ((ts.isClassElement(node) || ts.isTypeElement(node)) && internal(node)) {
        const start = text.lastIndexOf('\n', node.getFullStart() + text.slice(node.getFullStart()).search(/\S/)) + 1;
        cuts.push([start, node.getEnd()]);
        return;
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
    if (cuts.length === 0) continue;
    let out = '';
    let at = 0;
    for (const [start, end] of cuts.sort((a, b) => a[0] - b[0])) {
      out += text.slice(at, start);
      at = end + (text[end] === '\n' ? 1 : 0);
    }
    writeFileSync(path, out + text.slice(at));
  }
}

async function example() {
  const out = join(root, 'example/dist');
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const common = {
    entryPoints: [join(root, 'example/main.tsx')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    jsx: 'automatic',
    tsconfig: join(root, 'tsconfig.json'),
    logLevel: 'warning',
  };
  await esbuild.build({
    ...common,
    outfile: join(out, 'app.js'),
    minify: true,
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  await esbuild.build({
    ...common,
    outfile: join(out, 'app.dev.js'),
    define: { 'process.env.NODE_ENV': '"development"' },
  });
  copyFileSync(join(root, 'example/index.html'), join(out, 'index.html'));
}

sync();
if (!args.has('--sync')) {
  await lib();
  if (!args.has('--lib')) await example();
}

// The built package as its users load it (issue 26, item 5): CommonJS
// `require` (Jest, older bundlers), ES `import`, and a Next.js-style server
// render (no DOM: the provider and hooks render on the server, then run in
// the browser). Runs against dist/ through the package's `exports`, from a
// consumer directory whose node_modules links this package and React.
//
//   node --test test/packaging.test.mjs   (clients/react/ci.sh runs it)

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const pkg = resolve(fileURLToPath(new URL('..', import.meta.url)));
let consumer;

before(() => {
  consumer = mkdtempSync(join(tmpdir(), 'roomcast-react-consumer-'));
  const nm = join(consumer, 'node_modules');
  mkdirSync(join(nm, '@roomcast'), { recursive: true });
  symlinkSync(pkg, join(nm, '@roomcast/react'), 'dir');
  for (const dep of ['react', 'react-dom']) symlinkSync(join(pkg, 'node_modules', dep), join(nm, dep), 'dir');
});

after(() => rmSync(consumer, { recursive: true, force: true }));

/** Runs `source` as a file of the consumer (`name` sets CJS or ESM). */
function run(name, source) {
  const file = join(consumer, name);
  writeFileSync(file, source);
  return execFileSync(process.execPath, [file], { cwd: consumer, encoding: 'utf8', env: { ...process.env, NODE_ENV: 'production' } });
}

const HOOKS = ['RoomcastProvider', 'useRoom', 'usePresence', 'useRooms', 'useConnection', 'useRoomcast', 'RoomcastClient'];

test('require() of the package and of its browser client (CommonJS)', () => {
  const out = run(
    'consumer.cjs',
    `const m = require('@roomcast/react');
     const c = require('@roomcast/react/client');
     console.log(JSON.stringify({ hooks: ${JSON.stringify(HOOKS)}.map((k) => typeof m[k]), client: typeof c.RoomcastClient }));`,
  );
  assert.deepEqual(JSON.parse(out), { hooks: HOOKS.map(() => 'function'), client: 'function' });
});

test('import of the package (ES modules)', () => {
  const out = run(
    'consumer.mjs',
    `import * as m from '@roomcast/react';
     console.log(JSON.stringify(${JSON.stringify(HOOKS)}.map((k) => typeof m[k])));`,
  );
  assert.deepEqual(JSON.parse(out), HOOKS.map(() => 'function'));
});

test('every module a server component may import opens with "use client"', () => {
  for (const f of ['index.js', 'provider.js', 'useRoom.js', 'useRooms.js', 'index.cjs']) {
    const first = readFileSync(join(pkg, 'dist', f), 'utf8').split('\n')[0].trim();
    assert.match(first, /^['"]use client['"];?$/, `dist/${f} starts with ${first}`);
  }
});

test('a server render (no DOM, as Next.js renders a client component first): connecting and loading, no crash', () => {
  for (const [name, load] of [
    ['ssr.mjs', `import * as m from '@roomcast/react'; import { createElement as h } from 'react'; import { renderToString } from 'react-dom/server';`],
    ['ssr.cjs', `const m = require('@roomcast/react'); const { createElement: h } = require('react'); const { renderToString } = require('react-dom/server');`],
  ]) {
    const out = run(
      name,
      `${load}
       function Meeting() {
         const r = m.useRoom('meeting-42');
         const p = m.usePresence('meeting-42');
         return h('p', null, [r.status, String(r.loading), String(p.loading), String(r.events.length), String(r.state.stage ?? '-')].join(' '));
       }
       console.log(renderToString(h(m.RoomcastProvider, { url: 'http://127.0.0.1:9', token: 't' }, h(Meeting))));`,
    );
    assert.equal(out.trim(), '<p>connecting true true 0 -</p>', name);
  }
});

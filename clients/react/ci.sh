#!/usr/bin/env bash
# The React package's CI: install (npm ci, from package-lock.json), type-check,
# build (library, declarations, the example app the browser suite serves),
# type-check a consumer against the built declarations, and pack the tarball
# into <repo>/target/react-dist/. Exits non-zero on any failure.
#
# Run it before `cargo test`: tests/browser/react.test.js serves
# clients/react/example/dist/ and fails (saying so) when it is not built.
# It needs node 18+ and npm; it never runs cargo and never downloads a browser.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/react-dist"
cd "$here"

step() { echo "== react client: $*"; }

command -v node >/dev/null 2>&1 || { echo "node is required (apt-get install nodejs npm)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "npm is required (apt-get install npm)" >&2; exit 1; }
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || { echo "node 18 or newer is required (found $(node --version))" >&2; exit 1; }

step "install (npm ci)"
npm ci --no-audit --no-fund

step "type check (src/, example/, with src/client.js and src/client/ copied from src/web/)"
npm run --silent typecheck

step "build (dist/, example/dist/)"
npm run --silent build
for f in client.js "$root"/src/web/client/*.js; do
  f="${f#"$root/src/web/"}"
  cmp "$root/src/web/$f" "dist/$f" \
    || { echo "dist/$f is not a copy of src/web/$f" >&2; exit 1; }
done
for f in index.html app.js app.dev.js; do
  [ -s "example/dist/$f" ] || { echo "example/dist/$f was not built" >&2; exit 1; }
done

step "packaging (require, import, \"use client\", a server render: test/packaging.test.mjs)"
node --test test/packaging.test.mjs

step "declarations (a consumer and the README's examples type-checked against dist/*.d.ts)"
rm -f test/readme-*.tsx
node -e '
  const fs = require("fs");
  const blocks = [...fs.readFileSync("README.md", "utf8").matchAll(/```tsx\n([\s\S]*?)```/g)].map((m) => m[1]);
  if (blocks.length === 0) throw new Error("README.md has no tsx example");
  blocks.forEach((b, i) => fs.writeFileSync(`test/readme-${i + 1}.tsx`, `// extracted from README.md by ci.sh\n${b}`));
'
npm run --silent check:dist

step "pack (into target/react-dist/)"
mkdir -p "$out"
rm -f "$out"/roomcast-react-*.tgz
npm pack --silent --ignore-scripts --pack-destination "$out" >/dev/null  # built just above
tarball="$(ls "$out"/roomcast-react-*.tgz)"
listing="$(tar -tzf "$tarball")"
for f in package/package.json package/README.md package/dist/index.js package/dist/index.d.ts \
         package/dist/index.cjs package/dist/client.js package/dist/client.cjs package/dist/client.d.ts \
         package/dist/client/roomcast.js package/dist/client/roomcast.d.ts; do
  grep -qx "$f" <<<"$listing" || { echo "$f is missing from $tarball" >&2; exit 1; }
done
echo "react client: built $(basename "$tarball") ($(wc -c <"$tarball") bytes) and example/dist/"

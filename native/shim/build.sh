#!/bin/sh
# `npm run build:shim`: compiles berth-shim (libc only; static when libc.a is installed, as with Debian's
# libc6-dev) into native/shim/build/, plus a development layout in native/shim/build/bin/: berth-bridge
# and berth-ipam (hard links to the shim) beside `berth`, a symlink to the tree's bin/berth, which is what
# the shim's fallback runs. scripts/package.js ships the shim beside the single executable instead.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build"
mkdir -p "$out/bin"
cc="${CC:-gcc}"
flags="-Os -Wall -Wextra -Werror -fno-asynchronous-unwind-tables -Wl,--gc-sections -ffunction-sections -s"
if echo 'int main(void){return 0;}' | "$cc" -static -x c -o "$out/.probe" - 2>/dev/null; then
  static=-static
else
  static=""
  echo "build:shim: no static libc (libc.a): linking berth-shim dynamically against libc" >&2
fi
rm -f "$out/.probe"
# shellcheck disable=SC2086
"$cc" $flags $static -o "$out/berth-shim.tmp" "$here/berth-shim.c"
mv -f "$out/berth-shim.tmp" "$out/berth-shim"
for name in berth-bridge berth-ipam; do
  rm -f "$out/bin/$name"
  ln "$out/berth-shim" "$out/bin/$name"
done
ln -sfn ../../../../bin/berth "$out/bin/berth"

#!/usr/bin/env bash
# Does `recompose --harmonise` bring a decomposed and edited image closer to the truth?
#
# For N held-out complex scenes (data seed 1,000,000): decompose the rendered image with the
# bundled layer model, move the front-most instance by (W/8, H/16), and recomposite it plainly
# and harmonised. The truth is the same move applied to the scene's exact amodal layers.
# Prints the mean RGB L1 (0-1 scale) against the truth on the redrawn pixels (those where the
# two results differ) and on the whole image, per scene and over all.
#
#   scripts/harmonise-eval.sh [N] [SIZE] [MODEL] [REFINE]    # defaults: 8 256 bundled 0.3
#
# Uses target/release/zlayer (cargo build --release -p zlayer) unless ZLAYER is set.
set -euo pipefail
n=${1:-8}
size=${2:-256}
model=${3:-bundled}
refine=${4:-0.3}
zl=${ZLAYER:-target/release/zlayer}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$zl" synth --n "$n" --size "$size" --split complex --seed 1000000 --format png --out "$work/syn" >/dev/null 2>&1
for dir in "$work"/syn/*/; do
    k=$(basename "$dir")
    front=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['scene']['instances'][m['ranks'].index(0)]['id'])" "$dir/meta.json")
    move="$front=$((size / 8)),$((size / 16))"
    "$zl" decompose "$dir/image.png" --scene "$dir/scene.json" --ora "$work/$k.ora" 2>/dev/null
    "$zl" recompose "$dir" --move "$move" -o "$work/$k-truth.png" 2>/dev/null
    "$zl" recompose "$work/$k.ora" --move "$move" -o "$work/$k-plain.png" 2>/dev/null
    "$zl" recompose "$work/$k.ora" --move "$move" -o "$work/$k-harmonised.png" \
        --harmonise --model "$model" --refine "$refine" 2>/dev/null
done
python3 - "$work" <<'EOF'
import struct, sys, zlib, glob, os

def read_png(path):
    """8-bit RGB or RGBA PNG (what zlayer writes) as rows of RGB triples."""
    data = open(path, "rb").read()
    pos, idat, w = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), f"{path}: depth {depth}, colour type {colour}"
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, prev, out = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return [px for row in out for px in row]

def l1(a, b, where):
    idx = [i for i in range(len(a)) if where(i)]
    if not idx:
        return float("nan"), 0
    return sum(abs(a[i][c] - b[i][c]) for i in idx for c in range(3)) / (3 * 255 * len(idx)), len(idx)

work = sys.argv[1]
tot = {"band_plain": 0.0, "band_harm": 0.0, "all_plain": 0.0, "all_harm": 0.0, "px": 0, "n": 0}
print("| scene | redrawn px | L1 redrawn, plain | L1 redrawn, harmonised | L1 image, plain | L1 image, harmonised |")
print("|---|---|---|---|---|---|")
for truth_path in sorted(glob.glob(os.path.join(work, "*-truth.png"))):
    k = os.path.basename(truth_path)[:-len("-truth.png")]
    t, p, h = (read_png(os.path.join(work, f"{k}-{s}.png")) for s in ("truth", "plain", "harmonised"))
    band = lambda i: p[i] != h[i]
    bp, m = l1(p, t, band)
    bh, _ = l1(h, t, band)
    ap, _ = l1(p, t, lambda i: True)
    ah, _ = l1(h, t, lambda i: True)
    print(f"| {k} | {m} | {bp:.4f} | {bh:.4f} | {ap:.4f} | {ah:.4f} |")
    if m:
        tot["band_plain"] += bp * m; tot["band_harm"] += bh * m; tot["px"] += m
    tot["all_plain"] += ap; tot["all_harm"] += ah; tot["n"] += 1
px, n = max(tot["px"], 1), tot["n"]
print(f"| all ({n}) | {tot['px']} | {tot['band_plain'] / px:.4f} | {tot['band_harm'] / px:.4f} | {tot['all_plain'] / n:.4f} | {tot['all_harm'] / n:.4f} |")
EOF

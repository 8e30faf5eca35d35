#!/usr/bin/env bash
# Does DecFormer beat the linear latent blend inside `zlayer insert`, on generated latents?
#
# For N held-out regular scenes (data seed 1,000,000) rendered at SIZE: insert a new object
# behind instance 0, its box instance 0's shifted by (SIZE/6, SIZE/8), once per blend, with
# the same seed. insert reports how far the decoded latent blend is from the pixel composite
# of the decoded inputs, (1 - M)·D(z_A) + M·D(z_B), within 8 model pixels of the new
# object's edge (before its refinement). Prints both per scene, and the means with the paired
# change. Scenes where the model draws nothing the segmenter reads as the object are skipped.
#
#   scripts/insert-blend-eval.sh [N] [SIZE] [MODEL]    # defaults: 24 256 bundled
#
# Uses target/release/zlayer (cargo build --release -p zlayer) unless ZLAYER is set.
set -euo pipefail
n=${1:-24}
size=${2:-256}
model=${3:-bundled}
zl=${ZLAYER:-target/release/zlayer}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$zl" synth --n "$n" --size "$size" --split regular --seed 1000000 --format png --out "$work/syn" >/dev/null 2>&1
captions=("green sphere" "red disk" "yellow cube" "purple ring" "orange triangle" "white star")
i=0
for dir in "$work"/syn/*/; do
    k=$(basename "$dir")
    box=$(python3 -c "
import json, sys
s, d = json.load(open(sys.argv[1])), int(sys.argv[2])
x1, y1, x2, y2 = s['instances'][0]['bbox']
dx, dy = d // 6, d // 8
print(','.join(str(min(max(v, 0), d)) for v in (x1 + dx, y1 + dy, x2 + dx, y2 + dy)))" "$dir/scene.json" "$size")
    caption=${captions[$((i % ${#captions[@]}))]}
    i=$((i + 1))
    line="$k"
    for blend in linear pelc; do
        if err=$("$zl" insert "$dir/image.png" --scene "$dir/scene.json" --caption "$caption" \
            --box "$box" --behind 0 --model "$model" --latent-blend "$blend" \
            -o "$work/$k-$blend.png" 2>&1); then
            seam=$(sed -n 's/.* \([0-9.]*\) from the pixel composite.*/\1/p' <<<"$err")
        else
            seam=skip
        fi
        line="$line $seam"
    done
    echo "$line"
done | tee "$work/seams.txt"
python3 - "$work/seams.txt" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1])]
pairs = [(float(a), float(b)) for _, a, b in rows if "skip" not in (a, b)]
if not pairs:
    sys.exit("no scene drew the new object")
n = len(pairs)
lin = sum(a for a, _ in pairs) / n
dec = sum(b for _, b in pairs) / n
d = [b - a for a, b in pairs]
mean = sum(d) / n
se = (sum((x - mean) ** 2 for x in d) / max(n - 1, 1) / n) ** 0.5
print(f"{n} of {len(rows)} scenes: seam L1 within 8 px, linear {lin:.4f}, DecFormer {dec:.4f}, "
      f"change {100 * (dec - lin) / lin:+.1f}% (paired {mean:+.4f}, se {se:.4f})")
EOF

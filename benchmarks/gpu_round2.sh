#!/usr/bin/env bash
# Attention round two (issue 17) on the GPU, one device call per stage, .whl carried; results in
# $OUT/results.tgz (/tmp/round2), console $OUT/log.txt:
#   STAGE=quick bash benchmarks/gpu_round2.sh    # part 3 on little device time: the per-pass probe (its own copy
#                                                # roof), the linear GPU tests, bench rows at 16k
#   STAGE=linear bash benchmarks/gpu_round2.sh   # part 3: non-causal linear from S = 16k against the copy roof
#                                                # (calibrated in the same call), per-pass probe; part 7: the
#                                                # GPU suite with 8 workers (pytest-xdist), its summary
#   STAGE=causal bash benchmarks/gpu_round2.sh   # part 2: both causal forms against fla's chunk kernel
#   STAGE=survey bash benchmarks/gpu_round2.sh   # parts 2 and 5: causal forms (chunk sizes swept), WERSA's parts
#   STAGE=flash bash benchmarks/gpu_round2.sh    # part 4: triton_flash candidates, then bench-attn rows
#   STAGE=final bash benchmarks/gpu_round2.sh    # the bars in one bench-attn store (/tmp/round2/bars), after the
#                                                # causal kernels' GPU tests and the causal probe where part 2 missed
#   STAGE=norms bash benchmarks/gpu_round2.sh    # what normalising costs each causal kernel (both norms, fla
#                                                # beside), after the linear kernels' GPU tests; the non-causal
#                                                # per-pass probe. AFTER_TREE=DIR[,DIR...]: the same again after
#                                                # copying each DIR's files over main's tree in turn (a branch's
#                                                # changed files at their paths, untracked: `git archive BRANCH
#                                                # $(git diff --name-only main...BRANCH) | tar x -C DIR`; no patch
#                                                # or git needed there), main's files put back between them; a
#                                                # tree is probed only where it changes kernels (the causal probe
#                                                # for kernels/linear_attn, WERSA's per-part table for
#                                                # kernels/wersa, which "before" then gets too; WERSA_PROFILE=1:
#                                                # always); BEFORE=0: without main's run (measured by the call
#                                                # before, on the same warm machine); PROBE=0: without the
#                                                # non-causal probe; CAUSAL_S=0: without the causal one
#   STAGE=kernels bash benchmarks/gpu_round2.sh  # part 2's losing shapes per kernel (ours at two chunk levels,
#                                                # fla's), after the GPU suite (8 workers) on the changed launch path
#                                                # (SUITE=0: the probe alone; NORMS, DIMS, SEQS, BH, CHUNKS)
# Run `STAGE=linear` on two fresh machines: part 3's spread is between them.
set -u
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1
mkdir -p /tmp/round2
save() { tar czf "$OUT/results.tgz" -C /tmp round2; }
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | log
probe() {  # part 3 on every machine (the spread between fresh machines): per pass, against this machine's copy roof
  timeout 80 python3 -u benchmarks/probe_linear.py 2>&1 | grep -v Warning | tee "/tmp/round2/probe_linear_$1.txt" | log
}
bench() {  # seconds, --match text, backends, output folder name
  timeout "$1" mmchar bench-attn --only sweep --match "$2" --backends "$3" --resume -o "/tmp/round2/$4" 2>&1 \
    | grep -v "^|" | tail -2 | log
}
case "${STAGE:-linear}" in
  survey)  # parts 2, 4 and 5 where they stand: the causal forms against fla (chunk sizes swept), WERSA's parts,
           # triton-flash against cuDNN and flash
    timeout "${CAUSAL_S:-240}" python3 -u benchmarks/probe_linear.py --causal --seqs "${SEQS:-4096,16384,65536}" \
      --bh "${BH:-16,32,128}" --dims "${DIMS:-128,64}" 2>&1 | grep -v Warning | tee /tmp/round2/probe_linear_causal.txt | log
    save
    probe survey
    save
    timeout 90 python3 -u benchmarks/profile_wersa.py --out /tmp/round2/profile_wersa.md 2>&1 | tail -30 | log
    for m in "sweep d64 S4k" "sweep d64 S8k" "sweep d128 S8k"; do bench 60 "$m" cudnn,wersa bench-wersa; done
    save ;;
  flash)  # part 4: every triton_flash candidate (warp-specialised ones included) on the sweep shapes, then the
          # autotuned kernel in bench-attn, causal and not
    timeout 220 python3 -u benchmarks/tune_flash.py --out /tmp/round2/tune-flash --sweep-only --jobs 16 2>&1 \
      | grep -v Warning | tail -12 | log
    save
    probe flash
    save
    for m in "d64 S4k" "d128 S4k" "d64 S16k" "d128 S16k"; do bench 60 "$m" cudnn,flash,triton-flash bench-flash; done
    save ;;
  final)  # every bar's rows in one store: softmax (cuDNN, flash, triton-flash), linear against the copy roof
          # (calibrated here) and fla's chunk kernel, WERSA against cuDNN; first the changed causal kernels
    if [ "${PROBE:-1}" = 1 ]; then  # PROBE=0: the bench rows only (a second call on the same machine)
      timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider tests/kernels/test_linear_attn.py 2>&1 | tail -3 | log
      timeout "${CAUSAL_S:-200}" python3 -u benchmarks/probe_linear.py --causal --seqs "${SEQS:-16384,65536}" \
        --bh "${BH:-16,32}" --dims "${DIMS:-128,64}" 2>&1 | grep -v Warning | tee /tmp/round2/probe_linear_causal.txt | log
      save
      mmchar calibrate 2>&1 | tail -2 | log
    fi
    # MATCHES: comma-separated --match texts
    IFS=, read -ra matches <<< "${MATCHES:-sweep d64 S4k,sweep d128 S4k,sweep d64 S16k,sweep d128 S16k,sweep causal d64 S16k,sweep causal d128 S16k,sweep d64 S64k,sweep d128 S64k}"
    for m in "${matches[@]}"; do bench "${BENCH_S:-75}" "$m" "${BACKENDS:-cudnn,flash,triton-flash,linear,fla,wersa}" bars; done
    save ;;
  quick)
    timeout 100 python3 -u benchmarks/probe_linear.py 2>&1 | grep -v Warning | tee /tmp/round2/probe_linear.txt | log
    save
    timeout 60 python3 -m pytest -m gpu -q -p no:cacheprovider tests/kernels/test_linear_attn.py 2>&1 | tail -4 | log
    for d in 64 128; do
      timeout 40 mmchar bench-attn --only sweep --match "sweep d$d S16k" --backends cudnn,linear --resume \
        -o /tmp/round2/bench-linear 2>&1 | grep -v "^|" | tail -2 | log
    done
    save ;;
  kernels)  # SUITE=0: the probe only
    if [ "${SUITE:-1}" = 1 ]; then
      timeout -s INT "${SUITE_S:-200}" python3 -m pytest -m gpu -n "${WORKERS:-8}" -q -p no:cacheprovider \
        --durations=10 tests > /tmp/round2/gpu_suite.txt 2>&1
      tail -30 /tmp/round2/gpu_suite.txt | log
      save
    fi
    timeout "${CAUSAL_S:-200}" python3 -u benchmarks/probe_linear.py --causal --kernels --norms "${NORMS:-off}" \
      --seqs "${SEQS:-16384,65536}" --bh "${BH:-16,32}" --dims "${DIMS:-128,64}" --chunks "${CHUNKS:-256x64,64x64}" \
      2>&1 | grep -v Warning | tee /tmp/round2/probe_linear_kernels.txt | log
    save ;;
  norms)  # normalised against unnormalised in the same run, fla beside them; AFTER_TREE: then the same on each
          # tree with that folder's files copied over main's (AFTER_CHUNKS: its --chunks), on the same machine
    norms_run() {  # label, --chunks, whether to run the GPU tests first, causal probe (0/1), WERSA's table (0/1)
      echo "== norms: $1" | log
      if [ "$3" = 1 ]; then
        timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/kernels/test_linear_attn.py \
          tests/test_gpu.py -k "linear or changed_math_backend" 2>&1 | tail -3 | log
        echo "pytest: rc ${PIPESTATUS[0]}" | log
      fi
      if [ "$4" = 1 ] && [ "${CAUSAL_S:-200}" != 0 ]; then  # CAUSAL_S=0: no causal probe at all
        timeout "${CAUSAL_S:-200}" python3 -u benchmarks/probe_linear.py --causal --kernels --norms on,off \
          --seqs "${SEQS:-16384,65536}" --bh "${BH:-16,32}" --dims "${DIMS:-128,64}" --chunks "$2" \
          2>&1 | grep -v Warning | tee "/tmp/round2/probe_linear_causal_norms_$1.txt" | log
        save
      fi
      [ "${PROBE:-1}" = 1 ] && probe "norms_$1"  # PROBE=0: branches that leave the non-causal kernels alone
      if [ "$5" = 1 ]; then
        # 150 s: on a fresh machine 90 s cut the "before" run at its causal row (2026-12-07d); the console,
        # profiler table included, kept whole in a file
        timeout 150 python3 -u benchmarks/profile_wersa.py --out "/tmp/round2/profile_wersa_$1.md" 2>&1 \
          | grep -v Warning | tee "/tmp/round2/profile_wersa_$1.txt" | tail -8 | log
      fi
      save
    }
    touches() { [ -d "$1/$2" ]; }  # whether tree $1 changes files under $2
    IFS=, read -ra trees <<< "${AFTER_TREE:-}"
    wersa_any=${WERSA_PROFILE:-0}; for t in "${trees[@]}"; do touches "$t" kernels/wersa && wersa_any=1; done
    # with AFTER_TREE the tests run on the changed trees only: main's passed before it landed, and on a fresh
    # machine they compile and tune everything, past their 150 s (2026-12-07c)
    tests_before=1; [ "${#trees[@]}" -gt 0 ] && tests_before=0
    [ "${BEFORE:-1}" = 1 ] && norms_run before "${CHUNKS:-256x64}" "$tests_before" 1 "$wersa_any"
    keep=/tmp/round2-main-files  # main's copies of the files the trees replace (outside the packed results)
    mkdir -p "$keep"
    for t in "${trees[@]}"; do
      label=after; [ "${#trees[@]}" -gt 1 ] && label="after_$(basename "$t")"
      # the previous tree undone: main's files put back, the files it added removed
      (cd "$keep" && find . -type f) | while read -r f; do cp "$keep/$f" "$f"; done
      [ -f "$keep.added" ] && xargs -r rm -f < "$keep.added" && rm "$keep.added"
      (cd "$t" && find . -type f) | while read -r f; do  # main's copy kept once, before any tree replaces it
        if [ ! -e "$f" ]; then echo "$f" >> "$keep.added"
        elif [ ! -e "$keep/$f" ]; then install -D -m 644 "$f" "$keep/$f"; fi
      done
      cp -rv "$t"/. . | log || exit 1
      . benchmarks/gpu_install.sh  # the changed tree reinstalled
      causal=0; touches "$t" kernels/linear_attn && causal=1
      wersa=${WERSA_PROFILE:-0}; touches "$t" kernels/wersa && wersa=1
      norms_run "$label" "${AFTER_CHUNKS:-${CHUNKS:-256x64}}" 1 "$causal" "$wersa"
    done ;;
  causal)
    timeout 400 python3 -u benchmarks/probe_linear.py --causal --seqs 4096,16384,65536 2>&1 | grep -v Warning \
      | tee /tmp/round2/probe_linear_causal.txt | log
    save ;;
  linear)
    mmchar calibrate 2>&1 | tail -3 | log
    for d in 64 128; do for s in 16k 32k 64k; do
      timeout 90 mmchar bench-attn --only sweep --match "sweep d$d S$s" --backends cudnn,linear --resume \
        -o /tmp/round2/bench-linear 2>&1 | grep -v "^|" | tail -2 | log
      save  # per row: a call's limit then cuts rows, not the results
    done; done
    timeout 90 python3 -u benchmarks/probe_linear.py 2>&1 | grep -v Warning | tee /tmp/round2/probe_linear.txt | log
    save
    if [ -n "${SUITE:-}" ]; then
      timeout -s INT "${SUITE_S:-240}" python3 -m pytest -m gpu -n "${WORKERS:-8}" -q -p no:cacheprovider \
        --durations=25 tests > /tmp/round2/gpu_suite.txt 2>&1
      tail -40 /tmp/round2/gpu_suite.txt | log
      save
    fi ;;
esac

"""Where the device time of a traced region goes, read from a `jax.profiler` trace (no TensorBoard needed).

    python scripts/profile_summary.py TRACE_DIR [--steps N] [--top 15]

Reads the newest `*.xplane.pb` under TRACE_DIR with `jax.profiler.ProfileData` and prints, for the device
timelines (a GPU's kernel and copy streams; on a CPU, the XLA ops the host threads ran): how many
kernels ran, the span from the first start to the last end, the busy time (union of the kernels'
intervals) and so the idle share of the span, per step when `--steps` is given, and the ops that took
the most device time (grouped by their HLO op name). Idle time between kernels is what launches, host
syncs and the loop predicate's read-back cost; busy time split by op says which kernels to fix.
`bench_generate.py --profile` and `bench_train.py --profile` trace a run and print this.
"""
import argparse
import collections
import glob
import os

# Lines the profiler derives from the others (they would count every kernel twice).
_DERIVED_LINES = {"XLA Modules", "XLA Ops", "Steps", "Framework Ops", "Framework Name Scope", "Source code",
                  "XLA TraceMe", "Launch Stats", "TensorFlow Name Scope", "TensorFlow Ops"}


def _device_events(trace_dir: str):
  """[(start_ns, end_ns, op name)] of the device's kernels (or of a CPU's XLA ops) and the planes' names."""
  from jax.profiler import ProfileData
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"{trace_dir}: no *.xplane.pb under it (was it written by jax.profiler.trace?)")
  data = ProfileData.from_file(max(paths, key=os.path.getmtime))
  planes = list(data.planes)
  device = [p for p in planes if p.name.startswith("/device:") and "CUSTOM" not in p.name]
  chosen = device or [p for p in planes if p.name.startswith("/host:CPU")]
  events = []
  for plane in chosen:
    for line in plane.lines:
      if line.name in _DERIVED_LINES:
        continue
      found = []
      for event in line.events:
        stats = dict(event.stats)
        if not device and "hlo_op" not in stats:  # On a CPU only the XLA ops are device work.
          continue
        start = float(event.start_ns)
        found.append((start, start + float(event.duration_ns), str(stats.get("hlo_op") or event.name)))
      found.sort(key=lambda x: (x[0], x[0] - x[1]))  # by start, the enclosing event first
      # Leaves only: a CPU's `while` op encloses its body's ops (GPU kernels never nest).
      events += [e for e, after in zip(found, found[1:] + [None]) if after is None or after[0] >= e[1]]
  return events, [p.name for p in chosen]


def _union_ns(intervals) -> float:
  busy, end = 0.0, float("-inf")
  for s, e in sorted(intervals):
    if e <= end:
      continue
    busy += e - max(s, end)
    end = e
  return busy


def summarize(trace_dir: str, steps: int = 0, top: int = 15) -> str:
  """The report described in the module docstring, as text."""
  events, planes = _device_events(trace_dir)
  if not events:
    return f"profile {trace_dir}: no device events in {planes}"
  span = max(e for _, e, _ in events) - min(s for s, _, _ in events)
  busy = _union_ns((s, e) for s, e, _ in events)
  lines = [f"profile ({', '.join(planes)}): {len(events)} kernels, span {span / 1e6:.3f} ms, busy {busy / 1e6:.3f} ms "
           f"({busy / max(span, 1):.0%}), idle {(span - busy) / 1e6:.3f} ms"]
  if steps:
    lines.append(f"per step ({steps}): {len(events) / steps:.1f} kernels, span {span / steps / 1e6:.4f} ms, "
                 f"busy {busy / steps / 1e6:.4f} ms, mean kernel {busy / len(events) / 1e3:.2f} us")
  by_op = collections.defaultdict(lambda: [0.0, 0])
  for s, e, name in events:
    by_op[name][0] += e - s
    by_op[name][1] += 1
  total = sum(t for t, _ in by_op.values())
  lines.append(f"{'ms':>10} {'share':>6} {'count':>7}  op")
  for name, (t, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
    lines.append(f"{t / 1e6:10.3f} {t / max(total, 1):6.1%} {n:7d}  {name[:90]}")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("trace_dir")
  parser.add_argument("--steps", type=int, default=0, help="steps in the traced region (per-step lines)")
  parser.add_argument("--top", type=int, default=15)
  args = parser.parse_args()
  print(summarize(args.trace_dir, args.steps, args.top))


if __name__ == "__main__":
  main()

"""The sampler variants the generation benchmarks time (bench_generate.py, bench_rl.py), one shared list."""
from jaxpost import sampling


def engines(cuda_graphs: bool) -> list[tuple[str, tuple]]:
  """(name, compiler_options) of each variant: plain, then the decode loop as CUDA graphs if asked."""
  return [("plain", ())] + ([("cuda_graphs", sampling.CUDA_GRAPHS)] if cuda_graphs else [])

"""The shared config schema: defaults for every group, and one validator that names the bad key.

Every config file in `configs/` starts from `base_config()` and changes what it needs; the command
line (`--config.a.b=v`) can only set keys that exist here, because the config is locked.
"""
from __future__ import annotations

import os

import ml_collections

from jaxpost.algorithms import registry
from jaxpost.mesh import MESH_AXES, mesh_shape
from jaxpost.models import lora as lora_lib

MODEL_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
ATTENTION_IMPLS = ("xla", "pallas", "cudnn", "auto")
LOGPROB_IMPLS = ("auto", "naive", "chunked", "pallas")
REMAT_POLICIES = ("none", "full", "dots", "offload")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value is invalid; the message starts with the full key, e.g. `config.train.steps`."""


def model_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.path = ""                   # A Hugging Face model directory (config.json + safetensors): its architecture
                                # and weights replace the fields below, except dtypes, attention, logprob_impl,
                                # scan_layers, remat and head; its tokenizer is used when tokenizer.path is "".
  c.family = "llama"            # Architecture family of a from-scratch model (HF models: from config.json).
  c.vocab_size = -1             # -1: take it from the tokenizer.
  c.d_model = 128               # Residual stream width D.
  c.num_layers = 2              # Transformer blocks L.
  c.num_heads = 4               # Query heads H.
  c.num_kv_heads = 2            # Key/value heads K (H % K == 0: grouped-query attention).
  c.head_dim = 32               # Per-head width.
  c.mlp_dim = 384               # SwiGLU hidden width.
  c.rope_theta = 10000.0        # RoPE base.
  c.norm_eps = 1e-5             # RMSNorm epsilon.
  c.tie_embeddings = True       # Unembedding = embedding transposed.
  c.qkv_bias = False            # Bias on q/k/v projections (Qwen2-style).
  c.dtype = "float32"           # Compute dtype (bfloat16 for speed; params stay in param_dtype).
  c.param_dtype = "float32"     # Master weight dtype.
  c.attention = "xla"           # Attention: xla | pallas (jaxpost kernel) | cudnn | auto (best per platform).
  c.cudnn_max_segments = 0      # cuDNN attention (attention cudnn, or auto on GPU): rows with at most this many
                                # runs of equal segment ids use cuDNN's packed layout, no dense mask; rows with
                                # more fall back to the mask. 0 = always the mask. See models/packed_attention.py.
  c.logprob_impl = "auto"       # Per-token log-probs: auto (fastest per platform) | naive | chunked | pallas.
  c.scan_layers = False         # lax.scan over stacked layers (faster compile for deep models).
  c.remat = "none"              # Rematerialisation policy per block: none | full | dots | offload (dots to host).
  c.init_checkpoint = ""        # Start from the params of this workdir's latest checkpoint.
  c.head = "lm"                 # Output head: lm (next-token logits) | scalar (reward model; algorithm rm).
  return c


def dpo_config() -> ml_collections.ConfigDict:
  """The DPO-family group (algorithm dpo); data paths hold preference records (jaxpost/data/preferences.py)."""
  c = ml_collections.ConfigDict()
  c.loss_type = "sigmoid"       # sigmoid (DPO) | ipo | simpo | orpo | kto (see jaxpost/algorithms/dpo.py).
  c.beta = 0.1                  # Inverse temperature beta (ORPO: the odds-ratio weight lambda).
  c.label_smoothing = 0.0       # sigmoid/simpo: assumed label-flip probability (conservative DPO), in [0, 0.5).
  c.gamma = 0.5                 # simpo: target reward margin.
  c.desirable_weight = 1.0      # kto: weight of desirable examples (lambda_D).
  c.undesirable_weight = 1.0    # kto: weight of undesirable examples (lambda_U).
  c.ref_logps = "precompute"    # Reference log-probs: precompute (one pass before training) | online (frozen params).
  c.ipo_length_norm = True      # ipo: length-normalised log-ratios (TRL's form, the IPO paper's results) | summed.
  return c


def distill_config() -> ml_collections.ConfigDict:
  """Distillation from a frozen teacher (algorithm distill, jaxpost/algorithms/distill.py); sampling and the
  policy loss come from `rl` (the divergence's temperature is rl.temperature)."""
  c = ml_collections.ConfigDict()
  c.teacher = ""                # The teacher: a Hugging Face model directory or a jaxpost training workdir (its
                                # latest checkpoint); frozen, any size or family, the student's vocabulary.
  c.loss = "reverse_kl"         # reverse_kl (on-policy distillation: per-token advantage -(log pi_s - log pi_t)
                                # through rl.policy_loss) | gkd (generalized JSD over full distributions).
  c.reward_weight = 0.0         # reverse_kl: weight of the task reward's group advantage added to every token's.
  c.beta = 0.5                  # gkd: JSD interpolation beta (0 = forward KL(teacher || student), 1 = reverse).
  c.on_policy_fraction = 1.0    # gkd: lambda, the probability that a step trains on student samples (else on the
                                # dataset's completions, distill.completion_field of the prompt records).
  c.completion_field = "answer" # gkd: the prompt record's field holding the dataset's reply (e.g. solution).
  return c


def rm_config() -> ml_collections.ConfigDict:
  """The reward-model group (algorithm rm); data paths hold preference records."""
  c = ml_collections.ConfigDict()
  c.center_coef = 0.0           # eta of the reward-centering term eta * (r_chosen + r_rejected)^2 (0 = off).
  return c


def ppo_config() -> ml_collections.ConfigDict:
  """PPO with a critic (algorithm ppo); sampling, epochs, minibatches, clipping, beta and rewards come from `rl`."""
  c = ml_collections.ConfigDict()
  c.gamma = 1.0                 # Discount over completion tokens.
  c.lam = 0.95                  # GAE lambda.
  c.vf_coef = 0.1               # Weight of the value loss in the joint actor-critic loss.
  c.value_clip = 0.2            # Clip range of the value update around the rollout-time values.
  c.whiten_advantages = True    # Normalise GAE advantages over each rollout batch.
  c.value_init = ""             # Critic start: "" = the policy's weights + a fresh scalar head, or a rm workdir.
  return c


def lora_config() -> ml_collections.ConfigDict:
  """LoRA / QLoRA for every algorithm: only adapters train; the frozen base is also the reference model."""
  c = ml_collections.ConfigDict()
  c.rank = 0                    # Adapter rank r (0 = off: full fine-tuning).
  c.alpha = 16.0                # Scale alpha / r on the adapter output.
  c.dropout = 0.0               # Dropout on the adapter input (only 0 is implemented so far).
  c.target_modules = "all"      # Comma-separated q,k,v,o,gate,up,down (or HF names q_proj,...), "all", or "re:REGEX".
  c.base_dtype = ""             # Dtype the frozen base is kept in ("" = model.param_dtype), e.g. bfloat16.
  c.base_quant = "none"         # Quantise the frozen base (QLoRA, via qwix): none | int8 | int4 | nf4.
  return c


def rl_config() -> ml_collections.ConfigDict:
  """The online-RL group (GRPO family); data.train_path / data.eval_path then hold prompt records."""
  c = ml_collections.ConfigDict()
  c.prompts_per_step = 16       # Prompts P per rollout batch.
  c.num_generations = 8         # Samples G per prompt (one GRPO group).
  c.minibatch_size = 0          # Rows per optimizer update (0 = the whole rollout batch, P*G).
  c.num_epochs = 1              # Passes (mu) over each rollout batch.
  c.old_logps = "sampler"       # Behaviour log-probs: sampler (as sampled) | recompute (trainer, before updates).
  c.max_staleness = 0           # k: a step trains at policy version t on samples of versions >= t - k, sampled
                                # ahead by a producer thread while the trainer updates (0 = synchronous loop).
  c.off_policy_correction = "none"  # none | tis (truncated IS) | decoupled (AReaL's decoupled PPO); see
                                # jaxpost/algorithms/off_policy.py. tis/decoupled recompute the proximal log-probs.
  c.is_cap = 0.0                # Importance-weight cap C of tis/decoupled (0 = the correction's default: 2 / 5).
  c.rollout_devices = 0         # n > 0: the first n devices sample (their own mesh, weights copied after each
                                # update), the rest train; 0 = sampling shares the training mesh.
  c.max_prompt_len = 64         # Longer prompts are dropped (and counted).
  c.max_new_tokens = 16         # Completion budget (with rl.env: everything after the prompt, all turns and the
                                # environment's tokens).
  c.env = ""                    # Multi-turn episodes in this environment (jaxpost/envs: calculator | python |
                                # single_turn): its tools in the chat template, loss on the model's tokens only;
                                # its outcome scored by reward_fns. "" = one reply per prompt.
  c.max_turns = 4               # Assistant turns per episode (rl.env).
  c.max_turn_tokens = 0         # Tokens per assistant turn (rl.env; 0 = max_new_tokens).
  c.temperature = 1.0           # Sampling temperature, > 0 (the loss uses the same one).
  c.top_k = 0                   # 0 = off.
  c.top_p = 1.0                 # 1 = off.
  c.advantage = "grpo"          # grpo | dr_grpo | rloo | reinforce_pp.
  c.scale_rewards = "group"     # grpo: divide by the group's std | the batch's std (Lite PPO) | none (= dr_grpo).
  c.std_ddof = 0                # grpo: std's ddof, 0 (population; the demo's measured recipe) | 1 (TRL's, verl's).
  c.std_eps = 1e-6              # grpo: epsilon added to the std (TRL: 1e-4).
  c.policy_loss = "ppo_clip"    # ppo_clip | gspo | reinforce | cispo (cap 1 + epsilon_high) | sapo | vespo.
  c.aggregation = "seq_mean_token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm |
                                # seq_mean_token_sum (with gspo: LUSPO).
  c.sapo_tau_pos = 1.0          # sapo: gate temperature on positive advantages.
  c.sapo_tau_neg = 1.05         # sapo: gate temperature on negative advantages.
  c.vespo = ml_collections.ConfigDict()  # vespo: phi(w) = e^lambda w^k e^(-lambda w) of the sequence ratio w.
  c.vespo.k_pos = 2.0           # k for A >= 0.
  c.vespo.lambda_pos = 3.0      # lambda for A >= 0.
  c.vespo.k_neg = 3.0           # k for A < 0.
  c.vespo.lambda_neg = 2.0      # lambda for A < 0.
  c.epsilon_low = 0.2           # Clip range below 1.
  c.epsilon_high = 0.2          # Clip range above 1 (DAPO clip-higher: > epsilon_low).
  c.dual_clip = 0.0             # Dual-clip constant c > 1 for negative advantages (0 = off).
  c.beta = 0.0                  # KL coefficient to the frozen reference (0 = no reference model kept).
  c.kl_estimator = "k3"         # k1 | k2 | k3.
  c.kl_in_reward = False        # Apply the KL as a per-sequence reward penalty instead of a loss term.
  c.entropy_coef = 0.0          # Entropy bonus.
  c.reward_fns = "exact_match"  # Comma-separated names or "pkg.module:fn", each optionally "=weight".
  c.reward_timeout_s = 10.0     # A reward call past this scores 0 (counted).
  c.dynamic_sampling = False    # Drop groups whose rewards are all equal (DAPO) and refill.
  c.max_refills = 4             # Dropped groups are replaced with up to max_refills * prompts_per_step more prompts.
  c.overlong = "none"           # none | filter (no loss on truncated rows) | soft (DAPO length penalty).
  c.overlong_buffer = 4         # Soft penalty ramps over the last this-many tokens of the budget.
  c.eval_prompts = 200          # Held-out prompts per evaluation (greedy accuracy).
  c.pass_k = 0                  # Also report pass@k with k samples at `temperature` (0 = off).
  c.sampler = "engine"          # engine (jaxpost/engine: continuous batching over a paged KV cache; refills go in
                                # as requests) | static (sampling.generate: one padded batch per round; measured
                                # faster only on equal-length small batches, see scripts/bench_generate.py).
  c.engine = ml_collections.ConfigDict()
  c.engine.num_slots = 0        # Samples decoded at once (0 = prompts_per_step * num_generations).
  c.engine.num_pages = 0        # KV pool pages (0 = every slot's worst case, max_prompt_len + max_new_tokens).
  c.engine.page_size = 16       # Tokens per KV page.
  c.engine.steps_per_check = 8  # Decode steps per jitted call between host checks (finished samples, refills).
  c.cuda_graphs = False         # Compile the static sampler with sampling.CUDA_GRAPHS (decode loop as one CUDA
                                # graph; XLA:GPU only, other backends ignore it). Same samples; off until timed.
  return c


def base_config() -> ml_collections.ConfigDict:
  """All groups with defaults. Config files override fields; they never add new ones."""
  c = ml_collections.ConfigDict()
  c.algorithm = "sft"           # Which loss and loop: sft | rm | dpo (offline) | grpo | ppo | distill (online).
  c.model = model_config()

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""         # A sentencepiece .model file or a HF tokenizer folder ("" = model.path).

  c.data = ml_collections.ConfigDict()
  c.data.train_path = ""        # JSONL file(s) or glob(s), comma-separated.
  c.data.eval_path = ""         # Held-out JSONL for eval loss ("" = no eval).
  c.data.seq_len = 128          # Tokens per packed row T.
  c.data.pack = ml_collections.config_dict.placeholder(bool)  # sft: pack several examples per row (segment_ids
                                # keep them apart); unset = True. rm/dpo rows hold one pair each: leave it unset.
  c.data.overlong = "truncate"  # Examples longer than seq_len: truncate | drop (both counted).
  c.data.shuffle = True         # Shuffle rows each epoch.

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3             # Peak learning rate.
  c.optim.warmup_steps = 10     # Linear warmup from 0.
  c.optim.schedule = "cosine"   # cosine | constant (after warmup).
  c.optim.end_lr_ratio = 0.1    # Final lr = lr * end_lr_ratio (cosine).
  c.optim.b1 = 0.9              # Adam beta1.
  c.optim.b2 = 0.95             # Adam beta2.
  c.optim.eps = 1e-8            # Adam epsilon.
  c.optim.weight_decay = 0.0    # Decoupled weight decay (never on norms, biases or 1-D params).
  c.optim.grad_clip = 1.0       # Global-norm clip (0 = off).

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100           # Optimizer steps.
  c.train.batch_size = 8        # Global batch in rows.
  c.train.grad_accum = 1        # Microbatches per step (batch_size % grad_accum == 0).
  c.train.seed = 0              # Params init, data order and step rng.
  c.train.log_every = 10        # Steps between metrics lines.
  c.train.eval_every = 0        # Steps between eval-loss passes (0 = only at the end if eval_path).
  c.train.checkpoint_every = 0  # Steps between checkpoints (0 = only at the end).
  c.train.keep_checkpoints = 2  # Checkpoints kept on disk.
  c.train.stop_at_loss = 0.0    # Stop early once the logged train loss is below this (0 = off).
  c.train.progress = True       # tqdm bar on a terminal (plain lines otherwise).

  c.rl = rl_config()
  c.ppo = ppo_config()
  c.lora = lora_config()
  c.dpo = dpo_config()
  c.rm = rm_config()
  c.distill = distill_config()

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1              # Data-parallel axis size (-1: whatever is left).
  c.mesh.fsdp = 1               # Parameter-sharded data-parallel axis.
  c.mesh.tensor = 1             # Tensor-parallel axis (heads, mlp, vocab).
  return c


def _check(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}: {message}")


def _choice(config, key: str, choices) -> None:
  value = config
  for part in key.split("."):
    value = value[part]
  _check(value in choices, key, f"{value!r} is not one of {', '.join(map(str, choices))}")


def _check_unused(config, keys, why: str) -> None:
  """A field the algorithm does not read must keep its default: a one-line error instead of a setting
  silently ignored."""
  defaults = base_config()
  for key in keys:
    group, field = key.split(".")
    value, default = config[group][field], defaults[group][field]
    keep = "leave it unset" if default is None else f"leave it at its default {default!r}"
    _check(value == default, key, f"{value!r} is not used by algorithm={config.algorithm} ({why}); {keep}")


class Checks:
  """What an algorithm's `validate(config, checks)` raises its one-line errors with (see algorithms/base.py)."""

  def __init__(self, config):
    self.config = config

  def check(self, ok: bool, key: str, message: str) -> None:
    _check(ok, key, message)

  def choice(self, key: str, choices) -> None:
    _choice(self.config, key, choices)

  def unused(self, keys, why: str) -> None:
    _check_unused(self.config, keys, why)


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first invalid key. `num_devices` checks the mesh when given."""
  _choice(config, "algorithm", tuple(registry.ALGORITHMS))
  _choice(config, "model.family", MODEL_FAMILIES)
  _choice(config, "model.attention", ATTENTION_IMPLS)
  _choice(config, "model.logprob_impl", LOGPROB_IMPLS)
  _choice(config, "model.remat", REMAT_POLICIES)
  _choice(config, "model.dtype", DTYPES)
  _choice(config, "model.param_dtype", DTYPES)
  _choice(config, "data.overlong", ("truncate", "drop"))
  _choice(config, "optim.schedule", ("cosine", "constant"))
  algorithm = registry.get(config.algorithm)
  online = algorithm.loop == "online"
  if online:
    _validate_rl(config)
    _check_unused(config, ("train.batch_size",), "the rollout batch is rl.prompts_per_step x rl.num_generations "
                  "rows, each update rl.minibatch_size of them")
    _check_unused(config, ("data.seq_len", "data.pack", "data.overlong", "data.shuffle"),
                  "rollout rows are rl.max_prompt_len + rl.max_new_tokens - 1 long, one sample each, prompts "
                  "longer than rl.max_prompt_len are dropped, and prompts are dealt in a seeded shuffle")
  algorithm.validate(config, Checks(config))
  _check(config.model.cudnn_max_segments >= 0, "model.cudnn_max_segments",
         f"must be >= 0, got {config.model.cudnn_max_segments}")
  _choice(config, "model.head", ("lm", "scalar"))
  _check(config.model.head == algorithm.head, "model.head",
         f"algorithm {config.algorithm} needs head {algorithm.head!r}, got {config.model.head!r}")
  _validate_lora(config)
  m = config.model
  if m.path:
    _check(os.path.isfile(os.path.join(m.path, "config.json")), "model.path",
           f"{m.path!r} is not a Hugging Face model directory (no config.json)")
  for key in ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
    _check(m[key] > 0, f"model.{key}", f"must be > 0, got {m[key]}")
  _check(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
         f"num_heads={m.num_heads} is not a multiple of num_kv_heads={m.num_kv_heads}")
  _check(m.vocab_size == -1 or m.vocab_size > 0, "model.vocab_size", f"must be > 0 or -1, got {m.vocab_size}")
  t = config.train
  _check(t.steps > 0, "train.steps", f"must be > 0, got {t.steps}")
  _check(t.batch_size > 0, "train.batch_size", f"must be > 0, got {t.batch_size}")
  _check(t.grad_accum > 0, "train.grad_accum", f"must be > 0, got {t.grad_accum}")
  _check(t.batch_size % t.grad_accum == 0, "train.grad_accum",
         f"batch_size={t.batch_size} is not divisible by grad_accum={t.grad_accum}")
  for key in ("log_every", "eval_every", "checkpoint_every"):
    _check(t[key] >= 0, f"train.{key}", f"must be >= 0, got {t[key]}")
  _check(t.keep_checkpoints > 0, "train.keep_checkpoints", f"must be > 0, got {t.keep_checkpoints}")
  _check(config.data.seq_len > 1, "data.seq_len", f"must be > 1, got {config.data.seq_len}")
  _check(config.optim.lr > 0, "optim.lr", f"must be > 0, got {config.optim.lr}")
  _check(config.optim.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {config.optim.warmup_steps}")
  _check(config.optim.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {config.optim.grad_clip}")
  for axis in MESH_AXES:
    size = config.mesh[axis]
    _check(size == -1 or size > 0, f"mesh.{axis}", f"must be > 0 or -1, got {size}")
  _check(sum(config.mesh[a] == -1 for a in MESH_AXES) <= 1, "mesh", "at most one axis may be -1")
  if num_devices is not None and online and config.rl.rollout_devices:
    n = config.rl.rollout_devices
    _check(n < num_devices, "rl.rollout_devices", f"{n} leaves none of the {num_devices} devices to train on")
    num_devices -= n  # The training mesh is the rest.
  if num_devices is not None:
    fixed = 1
    for axis in MESH_AXES:
      fixed *= max(config.mesh[axis], 1)
    free = [a for a in MESH_AXES if config.mesh[a] == -1]
    shape = ", ".join(f"{a}={config.mesh[a]}" for a in MESH_AXES)
    if free:
      _check(num_devices % fixed == 0, f"mesh.{free[0]}", f"mesh ({shape}) does not divide {num_devices} devices")
    else:
      _check(fixed == num_devices, "mesh", f"mesh ({shape}) has {fixed} devices, but {num_devices} are present")
    per_step = (rl_minibatch(config) if online else t.batch_size) // t.grad_accum
    data_ways = mesh_shape(config, num_devices)
    ways = data_ways["data"] * data_ways["fsdp"]
    _check(per_step % ways == 0, "rl.minibatch_size" if online else "train.batch_size",
           f"microbatch of {per_step} rows does not split over data*fsdp={ways} devices")


def _validate_rl(config) -> None:
  """What every online algorithm reads: sampling, the rollout batch and its updates."""
  r = config.rl
  _choice(config, "rl.old_logps", ("sampler", "recompute"))
  for key in ("prompts_per_step", "num_generations", "num_epochs", "max_prompt_len", "max_new_tokens"):
    _check(r[key] > 0, f"rl.{key}", f"must be > 0, got {r[key]}")
  rows = r.prompts_per_step * r.num_generations
  mb = r.minibatch_size or rows
  _check(rows % mb == 0, "rl.minibatch_size", f"{mb} does not divide the rollout batch of {rows} rows")
  _check(r.max_refills >= 0, "rl.max_refills", f"must be >= 0, got {r.max_refills}")
  _check(r.max_staleness >= 0, "rl.max_staleness", f"must be >= 0, got {r.max_staleness}")
  _check(r.rollout_devices >= 0, "rl.rollout_devices", f"must be >= 0, got {r.rollout_devices}")
  _check(not ((r.max_staleness or r.rollout_devices) and r.sampler != "engine"),
         "rl.max_staleness" if r.max_staleness else "rl.rollout_devices",
         "asynchronous rollouts run on the rollout engine; set rl.sampler=engine")
  _choice(config, "rl.sampler", ("engine", "static"))
  if r.env:
    from jaxpost import envs
    _check(r.env in envs.ENVS, "rl.env", f"unknown environment {r.env!r}; registered: {', '.join(sorted(envs.ENVS))}")
    _check(r.sampler == "engine", "rl.env", "episodes run on the rollout engine; set rl.sampler=engine")
    _check(not (r.max_staleness or r.rollout_devices), "rl.env",
           "episodes run in the synchronous loop so far; set rl.max_staleness=0 and rl.rollout_devices=0")
    _check(r.max_turns > 0, "rl.max_turns", f"must be > 0, got {r.max_turns}")
    _check(0 <= r.max_turn_tokens <= r.max_new_tokens, "rl.max_turn_tokens",
           f"must be in [0, rl.max_new_tokens={r.max_new_tokens}], got {r.max_turn_tokens}")
  for key in ("num_slots", "num_pages"):
    _check(r.engine[key] >= 0, f"rl.engine.{key}", f"must be >= 0 (0 = automatic), got {r.engine[key]}")
  for key in ("page_size", "steps_per_check"):
    _check(r.engine[key] > 0, f"rl.engine.{key}", f"must be > 0, got {r.engine[key]}")
  _check(not (r.cuda_graphs and r.sampler == "engine"), "rl.cuda_graphs",
         "applies to the static sampler; set rl.sampler=static with it")
  _check(r.beta >= 0, "rl.beta", f"must be >= 0, got {r.beta}")
  _check(r.temperature > 0, "rl.temperature",
         f"must be > 0, got {r.temperature}: rollouts sample the policy at this temperature and the loss "
         "scores them at it; greedy rollouts (0) give a group identical samples (evaluation is greedy already)")


def _validate_lora(config) -> None:
  lo = config.lora
  _check(lo.rank >= 0, "lora.rank", f"must be >= 0, got {lo.rank}")
  if not lo.rank:
    return
  _check(lo.alpha > 0, "lora.alpha", f"must be > 0, got {lo.alpha}")
  _check(lo.dropout == 0, "lora.dropout", f"only 0 is implemented, got {lo.dropout}")
  _choice(config, "lora.base_quant", ("none", "int8", "int4", "nf4"))
  _check(lo.base_dtype in ("",) + DTYPES, "lora.base_dtype", f"{lo.base_dtype!r} is not one of '', {', '.join(DTYPES)}")
  try:
    lora_lib.resolve_targets(lo.target_modules)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def tokenizer_path(config) -> str:
  """config.tokenizer.path, or the HF model directory's own tokenizer when that is empty."""
  return config.tokenizer.path or config.model.path


def rl_minibatch(config) -> int:
  return config.rl.minibatch_size or config.rl.prompts_per_step * config.rl.num_generations

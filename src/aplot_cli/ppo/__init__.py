"""`aplot ppo`: PPO of a causal-LM policy against a reward model (method.md section 6).

This package owns the stage: loading the policy, the frozen reference and the reward model, reading
prompts, rollouts (transformers generation), the PPO update loop, checkpoints and `--resume`, the
per-update log, and the output artifact. One concern a module:

    prompts.py      the prompts: a pairs or samples artifact's, or a jsonl's
    policy.py       the policy with its value head, the reference, the reward (`Scorer`)
    rollout.py      sampling responses (also `aplot sample`'s) and one batch of scored rollouts
    update.py       one PPO update: rewards, GAE, clipped policy and value steps
    core.py         the PPO math, pure tensor functions (no models, no I/O)
    evaluation.py   held-out evaluation (`--eval-prompts`)
    checkpoints.py  checkpoints, `--resume`, every RNG stream
    stage.py        `run`, the entry point, the logs and the manifest

Importing the package imports none of them: `aplot sample` uses `rollout` and `policy` without the stage.
The names below are the artifact's layout, shared by the stage and its checkpoints.

Design choices, written down because PPO has many variants:
- Value model: a scalar head (`nn.Linear(hidden, 1)`, weights and bias initialised to zero) on the
  policy's last hidden state, i.e. a trunk shared with the policy. One forward pass gives logits and
  values, which halves the compute on CPU. The zero init makes V = 0 at the start, and since the head's
  weights are zero the value loss sends no gradient into the trunk until the head has learned
  something, so the policy starts undisturbed. `vf_coef` weights its loss.
- Reference: a frozen copy of the initial policy, used only for the per-token k1 KL penalty.
- The policy and the reward model need not share a tokenizer: responses are decoded to text and
  re-encoded for the reward model with `formatting.encode` (as train-rm and eval-rm do).
- Sampling is plain temperature sampling (top-k off, optional top-p, every other logits processor off,
  whatever the policy's own generation_config ships); log-probabilities are taken from logits /
  temperature so they are those of the sampling distribution.
- Score per response: the RM score, normalised (`reward_norm`: none, whiten per batch, or running
  mean/std over all updates), minus `missing_eos_penalty` when the response has no EOS.
- `--reward gold`: the prompts' verifiable gold checker (`verifiable.gold`) is the reward, 1.0 for a pass
  and 0.0 for a fail, normalised like an RM score; no reward model is loaded. It is the ceiling of the
  synthetic-gold setup (Gao et al. 2023): what PPO reaches when the proxy is the gold itself.
- Held-out evaluation (`--eval-prompts`): before the first update, every `eval_every` updates and after
  the last, `eval_n` responses per held-out prompt are sampled at the rollout temperature from an RNG
  seeded by (seed, update) inside a forked RNG, so the training stream is untouched, the same seed gives
  the same samples of the reference at update 0 (whatever the reward), and a resumed run evaluates as the
  uninterrupted one. Each evaluation records gold success, the reward's score and the KL to the reference
  with the training log's estimator (the k1 sum over response tokens of the sampled responses).
- Devices come from accelerate (`Accelerator`); one process (multi-process PPO is refused)."""

STAGE = "ppo"
LOG, ROLLOUTS, POLICY_DIR, CHECKPOINTS = "log.jsonl", "rollouts.jsonl", "policy", "checkpoints"
EVAL_LOG, EVAL_RESPONSES = "eval.jsonl", "eval_responses.jsonl"

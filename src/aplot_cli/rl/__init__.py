"""Reinforcement learning from a reward model: the PPO math lives in `core` (pure tensor functions)."""

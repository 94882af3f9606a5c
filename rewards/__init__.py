"""Reward functions for GRPO: built-in rewards, resolving reward specs, and scoring batches.

The lowest layer of rlreason: it imports nothing else from the project (only relative imports,
so it works whether installed as ``rlreason.rewards`` or imported from the source tree).
See :mod:`.registry` for the reward-function contract.
"""

from .code import CodeTestsReward, code_tests, extract_code
from .format import FormatReward, TagCountReward, format_lenient_reward, format_reward, tag_count_reward
from .length import CosineLengthReward, RepetitionPenaltyReward, SoftOverlongReward
from .math import WARNINGS, accuracy_reward, extract_answer, parse_gold, parse_number
from .registry import (
    BUILTIN,
    REWARDS,
    RewardFunc,
    RewardImportError,
    RewardSignatureError,
    RewardSpecError,
    build_rewards,
    check_signature,
    completion_text,
    resolve,
    reward_name,
)
from .runner import RewardOutput, RewardRunner, score, unique_names

__all__ = [
    "BUILTIN",
    "REWARDS",
    "WARNINGS",
    "CodeTestsReward",
    "CosineLengthReward",
    "FormatReward",
    "RepetitionPenaltyReward",
    "RewardFunc",
    "RewardImportError",
    "RewardOutput",
    "RewardRunner",
    "RewardSignatureError",
    "RewardSpecError",
    "SoftOverlongReward",
    "TagCountReward",
    "accuracy_reward",
    "build_rewards",
    "check_signature",
    "code_tests",
    "completion_text",
    "extract_answer",
    "extract_code",
    "format_lenient_reward",
    "format_reward",
    "parse_gold",
    "parse_number",
    "resolve",
    "reward_name",
    "score",
    "tag_count_reward",
    "unique_names",
]

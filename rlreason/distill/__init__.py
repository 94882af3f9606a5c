"""rlreason.distill.teacher."""

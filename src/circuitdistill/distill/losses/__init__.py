from .ce import final_ce
from .cka_loss import cka_alignment_loss
from .kd import VocabularyMismatch, check_same_vocab, kd_loss_full, kd_loss_topk, vocab_fingerprint

__all__ = ["final_ce", "cka_alignment_loss", "VocabularyMismatch", "check_same_vocab", "kd_loss_full",
           "kd_loss_topk", "vocab_fingerprint"]

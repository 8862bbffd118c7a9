from .ce import final_ce
from .kd import VocabularyMismatch, check_same_vocab, kd_loss_full, kd_loss_topk, vocab_fingerprint

__all__ = ["final_ce", "VocabularyMismatch", "check_same_vocab", "kd_loss_full",
           "kd_loss_topk", "vocab_fingerprint"]

from .distill.cka import cka

"""Data: text corpora and tokenizers (KG triples and dialogues come later)."""

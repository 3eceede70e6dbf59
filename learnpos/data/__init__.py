"""Data: text corpora, tokenizers, knowledge-graph triples and dialogues."""

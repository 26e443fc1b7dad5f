"""Guard models: the Llama Guard 3 prompt format and verdicts (`llama_guard`), taxonomies (`taxonomy`)."""

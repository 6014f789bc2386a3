"""The in-LLM stage: drop or merge visual tokens at decoder layers, keeping the KV cache exact."""

"""``topa demo``: the whole pipeline at toy scale, and the tiny models, tokenizer and videos it builds."""

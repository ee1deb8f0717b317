"""The fine-tuning stack: tokenizer, model, data, trainer, SFT, reward model, PPO, eval, pipeline.

The only code that imports torch; the chat path never imports it."""

"""The authors' release (the "official" checkpoints): Meta-format conversion, checkpoint mapping, safe unpickling."""

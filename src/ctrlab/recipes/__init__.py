"""Recipes: methods that transform a trained or training model rather than being one (compression,
embedding-dimension search, ...). Each works on any registered model with the structure it needs and
says which models it cannot handle and why."""

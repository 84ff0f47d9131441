-- What the request ran on and what was done to its prompt: the model's variant (its weight
-- type, or an experiment's variant) and the compression applied (`prune@0.5`), if any.
ALTER TABLE requests ADD COLUMN variant TEXT;
ALTER TABLE requests ADD COLUMN compression TEXT;

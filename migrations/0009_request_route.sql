-- How routing chose the target that answered: `auto`'s rule and its reason, or a fallback
-- chain's failed links; empty when the request named its model outright.
ALTER TABLE requests ADD COLUMN route TEXT;

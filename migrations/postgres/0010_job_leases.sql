-- A job's hold may be drawn from a lease: money an API process held, in one guarded
-- update of the account's counters, for several jobs of one key. Such a hold names its
-- lease; it took nothing from the counters itself, and its end gives back to them out of
-- the lease. A lease that stops taking jobs gives back what no job of it still holds, and
-- is ended by the last of its jobs to end.
ALTER TABLE reservations ADD COLUMN lease_id TEXT;
CREATE INDEX reservations_lease ON reservations (lease_id, state);

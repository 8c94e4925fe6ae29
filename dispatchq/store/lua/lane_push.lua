-- Publish a message of a batch into its lane (`dispatchq.broker.fetch`: a retry of a batch
-- item goes back to its batch's lane, not to the interactive queue).
-- KEYS: none (the lane keys are built from the prefixes). ARGV: batch ID, tenant (or ''),
-- the message, the six lane key prefixes.
lane_push(lane_args(ARGV, 4), ARGV[1], ARGV[2], {ARGV[3]})

-- A node's sent state is rewritten on every change that touches the node; compressing it
-- (pglz, the default for a large value) was a fifth of PostgreSQL's CPU per change at 1,000
-- nodes, for little gain on protobuf. Kept out of line, uncompressed.
ALTER TABLE node_sync_state ALTER COLUMN local_pb SET STORAGE EXTERNAL;

-- What a node was sent, kept as the wire's own encoding (the protobuf Snapshot of the node's
-- state without its ipcache) instead of JSON: at fleet scale every change that touches every
-- node rewrites every node's row, and JSON was most of that write's CPU (serializing, then
-- PostgreSQL parsing it into jsonb) and size. Rows written before keep their JSON `state`.
ALTER TABLE node_sync_state ADD COLUMN local_pb bytea;
ALTER TABLE node_sync_state ALTER COLUMN state DROP NOT NULL;

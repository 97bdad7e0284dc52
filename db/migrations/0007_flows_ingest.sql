-- Flow ingest at 100,000 flows/s. Measured on the 2-core development VM (one backend,
-- 200,000 rows): the heap insert of a flow row costs about 5 µs, and each per-row btree
-- entry about 6 µs more, so four btrees capped ingest near 25,000 rows/s whatever the
-- client did. Flows arrive in time order (agents send within a second or two of the
-- packet), so block ranges of the heap are already ordered by time: BRIN indexes, a few
-- bytes per 128 pages, find a time window (and a batch) at about 1 µs per row of ingest.
-- Lists walk back from the newest time in growing windows (`flows::pg`), applying the
-- other filters within each window.
DROP INDEX flows_tenant_time;
DROP INDEX flows_tenant_verdict_time;
DROP INDEX flows_tenant_src_ep_time;
DROP INDEX flows_tenant_dst_ep_time;

CREATE INDEX flows_time_brin ON flows USING brin (time);
-- A live follower reads one stored batch back by its number: rows of a batch are written
-- together, so they sit in one or two block ranges.
CREATE INDEX flows_batch_brin ON flows USING brin (batch);

-- Block ranges written since the last summary have no BRIN entry and every scan reads
-- them; control-api summarizes the new ones every few seconds (`flows::summarize`), so
-- that tail stays small. Runs as the schema owner (summarizing needs the index's owner).
CREATE FUNCTION weft_summarize_flows() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    r record;
    n bigint := 0;
BEGIN
    FOR r IN
        SELECT x.indexrelid AS idx FROM pg_inherits i
        JOIN pg_index x ON x.indrelid = i.inhrelid
        JOIN pg_class c ON c.oid = x.indexrelid
        JOIN pg_am am ON am.oid = c.relam
        WHERE i.inhparent = 'flows'::regclass AND am.amname = 'brin'
    LOOP
        n := n + brin_summarize_new_values(r.idx);
    END LOOP;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION weft_summarize_flows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION weft_summarize_flows() TO weft_app;

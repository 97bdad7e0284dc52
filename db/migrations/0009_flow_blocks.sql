-- Flows move from one row per flow (0005) to one row per node's batch, a *block* whose
-- flows are packed column by column (`control-api/src/flows/block.rs`). Measured on the
-- 2-core development VM: a flow row costs about 5 µs to insert and each btree entry about
-- 6 µs more, so a row per flow with the indexes a query needs tops out near 25,000
-- flows/s; a block pays those costs once per ~1,000 flows. Flows stored by 0005 are not
-- carried over (the row form had no users yet).
DROP TABLE flows;
DROP SEQUENCE flows_id_seq;
DROP FUNCTION weft_maintain_flow_partitions(integer, integer, integer);

CREATE SEQUENCE flow_blocks_seq AS bigint CACHE 100;

CREATE TABLE flow_blocks (
    tenant_id    uuid NOT NULL,
    -- A flow's id is `id << 16 | its index in the block`.
    id           bigint NOT NULL DEFAULT nextval('flow_blocks_seq'),
    -- The write that stored it (one per tenant and transaction), named by its NOTIFY.
    batch        bigint NOT NULL,
    min_time     timestamptz NOT NULL,
    max_time     timestamptz NOT NULL,
    node_id      uuid NOT NULL,
    node_name    text NOT NULL,
    cluster_id   uuid NOT NULL,
    cluster_name text NOT NULL,
    flows        integer NOT NULL,
    -- `<kind>:<value>` for what the flows contain (verdicts, endpoints, ports, ...): a
    -- query skips a block lacking every value it asks for without unpacking it.
    keys         text[] NOT NULL,
    -- The block's share of the service map, summed at ingest.
    edges        jsonb NOT NULL,
    data         bytea COMPRESSION lz4 NOT NULL
) PARTITION BY RANGE (max_time);

-- Newest first within a tenant: lists, live-stream reads and the service map.
CREATE INDEX flow_blocks_tenant_time ON flow_blocks (tenant_id, max_time DESC, id DESC);

ALTER TABLE flow_blocks ENABLE ROW LEVEL SECURITY;
ALTER TABLE flow_blocks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON flow_blocks USING (tenant_id = weft_tenant())
    WITH CHECK (tenant_id = weft_tenant());
GRANT SELECT, INSERT ON flow_blocks TO weft_app;
GRANT USAGE ON SEQUENCE flow_blocks_seq TO weft_app;

-- As 0005's, for `flow_blocks`: creates the daily partitions from `behind` days ago to
-- `ahead` days ahead, each with the parent's row-level security, and, when
-- `retention_days` is given, drops partitions wholly older than that. Runs as the schema
-- owner (the API's role cannot create tables); it touches only `flow_blocks_p*`.
CREATE FUNCTION weft_maintain_flow_partitions(behind integer, ahead integer,
                                              retention_days integer)
    RETURNS TABLE (created integer, dropped integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    d date;
    part text;
    n_created integer := 0;
    n_dropped integer := 0;
    r record;
BEGIN
    FOR d IN SELECT generate_series(today - behind, today + ahead, interval '1 day')::date LOOP
        part := 'flow_blocks_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF flow_blocks FOR VALUES FROM (%L) TO (%L)',
                part, (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part);
            EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', part);
            EXECUTE format(
                'CREATE POLICY tenant_isolation ON %I USING (tenant_id = weft_tenant()) '
                'WITH CHECK (tenant_id = weft_tenant())', part);
            n_created := n_created + 1;
        EXCEPTION
            -- Another replica created it meanwhile.
            WHEN duplicate_table OR duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
    IF retention_days IS NOT NULL THEN
        FOR r IN
            SELECT c.relname::text AS name FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'flow_blocks'::regclass
              AND c.relname ~ '^flow_blocks_p[0-9]{8}$'
              AND to_date(substr(c.relname, 14), 'YYYYMMDD') < today - retention_days
        LOOP
            EXECUTE format('DROP TABLE IF EXISTS %I', r.name);
            n_dropped := n_dropped + 1;
        END LOOP;
    END IF;
    RETURN QUERY SELECT n_created, n_dropped;
END
$$;
REVOKE ALL ON FUNCTION weft_maintain_flow_partitions(integer, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION weft_maintain_flow_partitions(integer, integer, integer) TO weft_app;

SELECT weft_maintain_flow_partitions(1, 2, NULL);

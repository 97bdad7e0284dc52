-- Flow records reported by node agents, stored denormalized (names and labels as they
-- were at ingest) so queries need no joins. Partitioned by day on `time`: retention drops
-- whole partitions, and time-bounded queries touch only the days they ask for.

CREATE SEQUENCE flows_id_seq AS bigint CACHE 1000;
-- One number per ingested batch: the NOTIFY that announces a batch names it, and a stream
-- follower on any replica reads exactly that batch back.
CREATE SEQUENCE flow_batches_seq AS bigint;

CREATE TABLE flows (
    time              timestamptz NOT NULL,
    id                bigint NOT NULL DEFAULT nextval('flows_id_seq'),
    batch             bigint NOT NULL,
    tenant_id         uuid NOT NULL,
    node_id           uuid NOT NULL,
    node_name         text NOT NULL,
    cluster_id        uuid NOT NULL,
    cluster_name      text NOT NULL,
    src_ip            inet NOT NULL,
    src_port          integer NOT NULL,
    src_endpoint_id   uuid,
    src_endpoint_name text,
    src_identity      bigint NOT NULL,
    src_labels        jsonb NOT NULL DEFAULT '{}'::jsonb,
    dst_ip            inet NOT NULL,
    dst_port          integer NOT NULL,
    dst_endpoint_id   uuid,
    dst_endpoint_name text,
    dst_identity      bigint NOT NULL,
    dst_labels        jsonb NOT NULL DEFAULT '{}'::jsonb,
    service_id        uuid,
    service_name      text,
    protocol          smallint NOT NULL,
    verdict           text NOT NULL,
    drop_reason       text,
    direction         text NOT NULL,
    observation_point text NOT NULL,
    tcp_flags         smallint NOT NULL,
    bytes             bigint NOT NULL,
    packets           bigint NOT NULL,
    count             bigint NOT NULL
) PARTITION BY RANGE (time);

-- Newest first within a tenant: every list, the cursor and the stream follower's read.
CREATE INDEX flows_tenant_time ON flows (tenant_id, time DESC, id DESC);
-- The filters people reach for first when something is dropped: by verdict, and by the
-- workload on either side. Other filters are applied over the time-ordered scan.
CREATE INDEX flows_tenant_verdict_time ON flows (tenant_id, verdict, time DESC);
CREATE INDEX flows_tenant_src_ep_time ON flows (tenant_id, src_endpoint_name, time DESC);
CREATE INDEX flows_tenant_dst_ep_time ON flows (tenant_id, dst_endpoint_name, time DESC);

ALTER TABLE flows ENABLE ROW LEVEL SECURITY;
ALTER TABLE flows FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON flows USING (tenant_id = weft_tenant())
    WITH CHECK (tenant_id = weft_tenant());
GRANT SELECT, INSERT ON flows TO weft_app;
GRANT USAGE ON SEQUENCE flows_id_seq, flow_batches_seq TO weft_app;

-- Creates the daily partitions from `behind` days ago to `ahead` days ahead, each with the
-- same row-level security as the parent (a partition read directly must be walled too),
-- and, when `retention_days` is given, drops partitions wholly older than that. Runs as
-- the schema owner (the API's role cannot create tables); it touches only `flows_p*`.
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
        part := 'flows_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF flows FOR VALUES FROM (%L) TO (%L)',
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
            WHERE i.inhparent = 'flows'::regclass AND c.relname ~ '^flows_p[0-9]{8}$'
              AND to_date(substr(c.relname, 8), 'YYYYMMDD') < today - retention_days
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

-- Yesterday to two days ahead exist from the start; the maintenance task keeps it so.
SELECT weft_maintain_flow_partitions(1, 2, NULL);

-- Ingest resolves endpoints by address within the tenant.
CREATE INDEX endpoints_tenant_ipv4 ON endpoints (tenant_id, ipv4);
CREATE INDEX endpoints_tenant_ipv6 ON endpoints (tenant_id, ipv6);

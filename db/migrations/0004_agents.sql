-- Node agents authenticate before their tenant is known: narrow lookups by credential
-- hash, as for API tokens (see 0002).

ALTER TABLE nodes ADD CONSTRAINT nodes_credential_hash_key UNIQUE (credential_hash);

CREATE FUNCTION weft_find_join_token(hash bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, cluster_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT j.id, j.tenant_id, j.cluster_id FROM join_tokens j
        WHERE j.token_hash = hash AND j.revoked_at IS NULL AND j.expires_at > now()
          AND (j.max_uses IS NULL OR j.uses < j.max_uses)
    $$;

CREATE FUNCTION weft_find_node(hash bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, cluster_id uuid, name text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT n.id, n.tenant_id, n.cluster_id, n.name FROM nodes n WHERE n.credential_hash = hash $$;

REVOKE ALL ON FUNCTION weft_find_join_token(bytea), weft_find_node(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION weft_find_join_token(bytea), weft_find_node(bytea) TO weft_app;

-- Identity garbage collection: an identity no endpoint uses, and unused for the grace
-- period, is deleted. Runs across tenants (from a background task), hence SECURITY DEFINER;
-- it touches nothing but unreferenced identities.
CREATE FUNCTION weft_gc_identities(grace interval) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
        WITH gone AS (
            DELETE FROM identities i
            WHERE i.last_used_at < now() - grace
              AND NOT EXISTS (SELECT 1 FROM endpoints e
                              WHERE e.tenant_id = i.tenant_id AND e.identity = i.number)
            RETURNING 1
        )
        SELECT count(*) FROM gone
    $$;
REVOKE ALL ON FUNCTION weft_gc_identities(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION weft_gc_identities(interval) TO weft_app;

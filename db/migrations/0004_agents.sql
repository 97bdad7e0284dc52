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

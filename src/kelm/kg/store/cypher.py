"""Cypher shared by the backends. LadybugDB, FalkorDB and Neo4j all accept these statements."""

FACT_COLUMNS = (
    "h.id AS head, f.rel AS relation, t.id AS tail, f.split AS split, "
    "f.source AS source, f.confidence AS confidence, f.time AS time"
)

# Facts leaving any of $ids, then facts entering them from outside $ids: each fact once.
OUT_FACTS = f"MATCH (h:Entity)-[f:FACT]->(t:Entity) WHERE h.id IN $ids RETURN {FACT_COLUMNS}"
IN_FACTS = f"MATCH (t:Entity)<-[f:FACT]-(h:Entity) WHERE t.id IN $ids AND NOT h.id IN $ids RETURN {FACT_COLUMNS}"
# FalkorDB's planner starts a labelled pattern from a label scan of `h` (a full scan); leaving `h`
# unlabelled makes it start from the index on :Entity(id). Same answer, ~100x faster on CoDEx-M.
IN_FACTS_UNLABELLED_HEAD = (
    f"MATCH (t:Entity) WHERE t.id IN $ids MATCH (h)-[f:FACT]->(t) WHERE NOT h.id IN $ids RETURN {FACT_COLUMNS}"
)
# Facts with both ends in $ids. Two MATCH clauses so every planner starts from the index on h.
# Neighbour ids only (for breadth-first search), both directions, each pair once.
OUT_NEIGHBORS = "MATCH (h:Entity)-[:FACT]->(t:Entity) WHERE h.id IN $ids RETURN DISTINCT h.id AS src, t.id AS dst"
IN_NEIGHBORS = "MATCH (t:Entity)<-[:FACT]-(h:Entity) WHERE t.id IN $ids RETURN DISTINCT t.id AS src, h.id AS dst"
IN_NEIGHBORS_UNLABELLED_HEAD = (
    "MATCH (t:Entity) WHERE t.id IN $ids MATCH (h)-[:FACT]->(t) RETURN DISTINCT t.id AS src, h.id AS dst"
)
INNER_FACTS = (
    f"MATCH (h:Entity) WHERE h.id IN $ids MATCH (h)-[f:FACT]->(t:Entity) WHERE t.id IN $ids RETURN {FACT_COLUMNS}"
)
ALL_FACTS = f"MATCH (h:Entity)-[f:FACT]->(t:Entity) RETURN {FACT_COLUMNS}"
SPLIT_FACTS = f"MATCH (h:Entity)-[f:FACT]->(t:Entity) WHERE f.split = $split RETURN {FACT_COLUMNS}"

ENTITY_COLUMNS = "e.id AS id, e.label AS label, e.description AS description, e.types AS types"
ENTITIES_BY_ID = f"MATCH (e:Entity) WHERE e.id IN $ids RETURN {ENTITY_COLUMNS}"
ALL_ENTITIES = f"MATCH (e:Entity) RETURN {ENTITY_COLUMNS} ORDER BY e.id"
ALL_RELATIONS = "MATCH (r:Relation) RETURN r.id AS id, r.label AS label, r.description AS description ORDER BY r.id"

COUNT_ENTITIES = "MATCH (e:Entity) RETURN count(e) AS n"
COUNT_RELATIONS = "MATCH (r:Relation) RETURN count(r) AS n"
COUNT_SPLITS = "MATCH (:Entity)-[f:FACT]->(:Entity) RETURN f.split AS split, count(f) AS n"

# Upserts: MERGE on the key, then overwrite only the fields the caller supplied.
MERGE_ENTITIES = (
    "UNWIND $rows AS row MERGE (e:Entity {id: row.id}) "
    "SET e.label = coalesce(row.label, e.label), "
    "e.description = coalesce(row.description, e.description), "
    "e.types = CASE WHEN size(row.types) > 0 THEN row.types ELSE e.types END"
)
MERGE_RELATIONS = (
    "UNWIND $rows AS row MERGE (r:Relation {id: row.id}) "
    "SET r.label = coalesce(row.label, r.label), r.description = coalesce(row.description, r.description)"
)
MERGE_FACTS = (
    "UNWIND $rows AS row "
    "MATCH (h:Entity {id: row.h}), (t:Entity {id: row.t}) "
    "MERGE (h)-[f:FACT {rel: row.r}]->(t) "
    "SET f.split = coalesce(row.split, f.split), f.source = coalesce(row.source, f.source), "
    "f.confidence = coalesce(row.confidence, f.confidence), f.time = coalesce(row.time, f.time)"
)
# Bulk creation for backends without a native bulk loader (FalkorDB, Neo4j).
CREATE_FACTS = (
    "UNWIND $rows AS row "
    "MATCH (h:Entity {id: row.h}), (t:Entity {id: row.t}) "
    "CREATE (h)-[:FACT {rel: row.r, split: row.split, source: row.source, "
    "confidence: row.confidence, time: row.time}]->(t)"
)
MERGE_ENDPOINTS = "UNWIND $ids AS id MERGE (:Entity {id: id})"
MERGE_RELATION_IDS = "UNWIND $ids AS id MERGE (:Relation {id: id})"
DELETE_ALL = "MATCH (n) DETACH DELETE n"

# Bulk creation of vocabulary rows whose ids are known to be new (callers track known ids).
CREATE_ENTITIES = (
    "UNWIND $rows AS row "
    "CREATE (:Entity {id: row.id, label: row.label, description: row.description, types: row.types})"
)
CREATE_RELATIONS = "UNWIND $rows AS row CREATE (:Relation {id: row.id, label: row.label, description: row.description})"
ENTITY_IDS = "MATCH (e:Entity) RETURN e.id AS id"
RELATION_IDS = "MATCH (r:Relation) RETURN r.id AS id"

# MERGE_ENDPOINTS, MERGE_RELATION_IDS and MERGE_FACTS as one statement, for backends where a
# single statement is the unit of atomicity (FalkorDB). Parameters: $ids, $rel_ids, $rows.
UPSERT_FACTS = (
    "UNWIND $ids AS id MERGE (:Entity {id: id}) WITH count(*) AS n_ids "
    "UNWIND $rel_ids AS rid MERGE (:Relation {id: rid}) WITH count(*) AS n_rels " + MERGE_FACTS
)

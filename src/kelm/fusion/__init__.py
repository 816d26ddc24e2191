"""Knowledge-graph → language-model injection: entity linking, subgraph retrieval, graph encoders,
fusion models (concatenation, GreaseLM-style interaction layers) and the joint loss.

The task that trains them is `kelm.tasks.kg_enhanced` (``kg-enhanced-classification``)."""

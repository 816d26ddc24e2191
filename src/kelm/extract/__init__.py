"""Knowledge extraction: text to mentions and relations (`SpanRelationExtractor`), decoded
strictly (`kelm.extract.decoding`)."""

from kelm.extract.decoding import Mention, Relation
from kelm.extract.model import ExtractorSettings, SpanRelationExtractor

__all__ = ["ExtractorSettings", "Mention", "Relation", "SpanRelationExtractor"]

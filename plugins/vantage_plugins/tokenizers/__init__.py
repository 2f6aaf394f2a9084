"""Built-in tokenizers."""

from vantage_core.api import hookimpl


@hookimpl
def register_tokenizers(register):
    # The class imports sentencepiece only when it trains or loads a model.
    from vantage_core.api import SentencePieceTokenizer

    from vantage_plugins.tokenizers.actions import ActionVocabulary

    register("sentencepiece", SentencePieceTokenizer)
    register("sql_actions", ActionVocabulary)

"""A LangGraph support agent to import with `terrazzo import langgraph examples/langgraph/support_graph.py:graph`.

It is the ReAct tool loop from LangGraph's docs: a chat model bound to tools decides whether to call one
(`tools_condition`), a ToolNode runs it, and the answer goes back to the model. The chat model here is
LangChain's scripted test model so that the file imports anywhere; with a real one (ChatOpenAI(model=...),
ChatHuggingFace, ...) the importer reads the model's name itself. The `terrazzo` metadata says what
LangGraph cannot: which catalog model serves the call, its token counts, how often a tool is called,
and how long a tool takes.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition


@tool
def order_status(order_id: str) -> str:
    """Where an order is."""
    return f"order {order_id} is on its way"


model = GenericFakeChatModel(messages=iter([AIMessage(content="Your order is on its way.")]))


def answer(state: MessagesState) -> dict[str, Any]:
    return {"messages": [model.invoke(state["messages"])]}


builder = StateGraph(MessagesState)
builder.add_node("answer", answer, metadata={"terrazzo": {
    "model": "qwen2.5-7b", "input_tokens": 1500, "output_tokens": 200,
    "branches": {"tools": 0.3, "__end__": 0.7}}})
builder.add_node("tools", ToolNode([order_status]), metadata={"terrazzo": {"latency_s": 0.15}})
builder.add_edge(START, "answer")
builder.add_conditional_edges("answer", tools_condition)
builder.add_edge("tools", "answer")
graph = builder.compile()

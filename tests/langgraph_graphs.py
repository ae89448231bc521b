"""Three LangGraph graphs for the importer tests, written the way LangGraph's own docs build them:
a ReAct tool loop (chat model bound to tools, ToolNode, tools_condition), a router with branches,
and a graph with a compiled sub-graph as a node.

The chat model is a small LangChain BaseChatModel that answers from a script (no network, no weights),
so the ReAct graph can also be run end to end; its `model` field is what a provider's model id is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import Field
from typing_extensions import TypedDict


class ScriptedChatModel(BaseChatModel):
    """Answers with `replies` in turn: a string is a final answer; a dict {name: args} asks for tool calls."""

    model: str
    replies: list[Any] = Field(default_factory=list)
    turn: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        reply = self.replies[self.turn % len(self.replies)] if self.replies else "ok"
        self.turn += 1
        if isinstance(reply, dict):
            calls = [{"name": n, "args": a, "id": f"call{self.turn}-{i}"} for i, (n, a) in enumerate(reply.items())]
            message = AIMessage(content="", tool_calls=calls)
        else:
            message = AIMessage(content=str(reply))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[getattr(t, "name", str(t)) for t in tools], **kwargs)


@tool
def order_status(order_id: str) -> str:
    """Where an order is."""
    return f"order {order_id} shipped"


@tool
def search_docs(query: str) -> str:
    """Search the help centre."""
    return f"3 passages about {query}"


# ---------------------------------------------------------------- 1. ReAct tool loop

react_model = ScriptedChatModel(model="Qwen/Qwen2.5-7B-Instruct",
                                replies=[{"order_status": {"order_id": "1234"}}, "Your order 1234 has shipped."])
react_llm = react_model.bind_tools([order_status, search_docs])


def call_model(state: MessagesState) -> dict[str, Any]:
    return {"messages": [react_llm.invoke(state["messages"])]}


def build_react() -> StateGraph:
    g = StateGraph(MessagesState)
    g.add_node("agent", call_model, metadata={"terrazzo": {"input_tokens": 1024, "output_tokens": 128,
                                                            "branches": {"tools": 0.6, "__end__": 0.4}}})
    g.add_node("tools", ToolNode([order_status, search_docs]), metadata={"terrazzo": {"latency_s": 0.2}})
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g


react = build_react().compile()


# ---------------------------------------------------------------- 2. router with branches

class Ticket(TypedDict, total=False):
    question: str
    topic: str
    answer: str


triage_model = ScriptedChatModel(model="meta-llama/Llama-3.1-8B-Instruct", replies=["billing"])
expert_model = ScriptedChatModel(model="Qwen/Qwen2.5-72B-Instruct", replies=["Here is how refunds work."])


def triage(state: Ticket) -> Ticket:
    return {"topic": str(triage_model.invoke(state["question"]).content)}


def route(state: Ticket) -> Literal["billing", "technical", "faq"]:
    topic = state.get("topic", "faq")
    return topic if topic in ("billing", "technical") else "faq"  # type: ignore[return-value]


def billing(state: Ticket) -> Ticket:
    return {"answer": str(expert_model.invoke(state["question"]).content)}


def technical(state: Ticket) -> Ticket:
    return {"answer": str(expert_model.invoke(state["question"]).content)}


def faq(state: Ticket) -> Ticket:
    return {"answer": search_docs.invoke({"query": state["question"]})}


def build_router() -> StateGraph:
    g = StateGraph(Ticket)
    g.add_node("triage", triage, metadata={"terrazzo": {"input_tokens": 256, "output_tokens": 4,
                                                         "branches": {"billing": 0.3, "technical": 0.5, "faq": 0.2}}})
    g.add_node("billing", billing)
    g.add_node("technical", technical)
    g.add_node("faq", faq, metadata={"terrazzo": {"kind": "tool", "latency_s": 0.05}})
    g.add_edge(START, "triage")
    g.add_conditional_edges("triage", route)
    for leaf in ("billing", "technical", "faq"):
        g.add_edge(leaf, END)
    return g


router = build_router().compile()


# ---------------------------------------------------------------- 3. graph with a sub-graph

class Report(TypedDict, total=False):
    topic: str
    notes: str
    draft: str


writer_model = ScriptedChatModel(model="mistralai/Mistral-7B-Instruct-v0.3", replies=["draft"])
summary_model = ScriptedChatModel(model="google/gemma-2-9b-it", replies=["notes"])


def gather(state: Report) -> Report:
    return {"notes": search_docs.invoke({"query": state["topic"]})}


def summarise(state: Report) -> Report:
    return {"notes": str(summary_model.invoke(state["notes"]).content)}


def outline(state: Report) -> Report:
    return {"draft": str(writer_model.invoke(state["topic"]).content)}


def write(state: Report) -> Report:
    return {"draft": str(writer_model.invoke(state["notes"]).content)}


def build_research() -> StateGraph:
    g = StateGraph(Report)
    g.add_node("gather", gather, metadata={"terrazzo": {"kind": "tool", "latency_s": 0.3}})
    g.add_node("summarise", summarise)
    g.add_edge(START, "gather")
    g.add_edge("gather", "summarise")
    g.add_edge("summarise", END)
    return g


def build_writer() -> StateGraph:
    g = StateGraph(Report)
    g.add_node("outline", outline)
    g.add_node("research", build_research().compile())
    g.add_node("write", write, metadata={"terrazzo": {"input_tokens": 2048, "output_tokens": 512}})
    g.add_edge(START, "outline")
    g.add_edge("outline", "research")
    g.add_edge("research", "write")
    g.add_edge("write", END)
    return g


writer = build_writer().compile()

"""What every target's emitter does the same way: the kernel source's frame, the step loop over a case's plan, and
the entry point's frame (cortex_kernel_run: try, the target's body, errors as messages). A target (cpp.py, cuda.py)
supplies its sections, one `emit_<kind>` per step kind (plan.Step), and its run body; it renders the plan and
decides nothing (plan.py decides)."""
from __future__ import annotations

from . import cstyle
from .cstyle import comment, cstr
from .plan import Access, CodegenError, plan_kernel

RUN_SIGNATURE = ["extern \"C\" CORTEX_EXPORT int32_t cortex_kernel_run(const CortexTensor* inputs, int32_t num_inputs,",
                 "    CortexAllocOutput alloc_output, void* alloc_context, const CortexExecution* execution,",
                 "    char* error, size_t error_size) {",
                 "  try {"]
RUN_CATCH = ["  } catch (const std::exception& e) {",
             "    cortex::write_error(error, error_size, e.what());",
             "    return 1;",
             "  } catch (...) {",
             "    cortex::write_error(error, error_size, \"unknown error in Cortex kernel\");",
             "    return 1;",
             "  }",
             "}"]


class KernelEmitter:
    """A kernel's source from the plan of `program` for `backend` (targets.Backend)."""
    header = ""  # the source's first lines (format fields: name, identity)

    def __init__(self, program, backend):
        self.backend = backend
        self.plan = plan_kernel(program, backend)
        self.p = program
        self.inputs = self.plan.inputs
        self.syntax = cstyle.HostSyntax(self.plan)
        self.dialect = backend.dialect()
        self.index_tables = {}  # tuple of indices -> C identifier of a static table

    def index_table(self, indices) -> str:
        key = tuple(indices)
        if key not in self.index_tables:
            self.index_tables[key] = f"kIdx{len(self.index_tables)}"
        return self.index_tables[key]

    # ---- the source ------------------------------------------------------------------------------------------

    def generate(self, identity: str) -> str:
        """header, the target's sections before and after the rearrangement tables (the body renders first: it
        names the tables), the kernel ABI's signature, the entry point."""
        body = self.body()
        tables = [f"{self.dialect.index_table_decl} {name}[] = {{{cstyle.cints(idx)}}};"
                  for idx, name in self.index_tables.items()]
        out = [self.header.format(name=comment(self.p.name), identity=cstr(identity))] + self.before_tables()
        if tables:
            out.append("// element positions of rearranged values\n" + "\n".join(tables) + "\n")
        out += self.after_tables() + body
        out.append("}  // namespace\n")
        out.append(cstyle.signature_source(self.plan))
        out.append(self.run_fn())
        return "\n".join(out)

    def body(self) -> list:
        raise NotImplementedError

    def before_tables(self) -> list:
        return []

    def after_tables(self) -> list:
        return []

    # ---- one case's steps --------------------------------------------------------------------------------------

    def emit_steps(self, env, cp, lines: list, buffer_decl) -> None:
        """Each step of the case that is not read in place nor fused with the new rows: its buffer (declared by
        buffer_decl(k, step, width)), then the target's `emit_<kind>`, then `after_step`."""
        for k, step in enumerate(cp.steps):
            e = step.node
            if step.buffer in cp.inline:
                continue
            width = e.x.width if step.kind == "transpose" else e.width
            lines.append(buffer_decl(k, step, width))
            if e in cp.fused:
                continue  # computed with the new rows
            emit = getattr(self, f"emit_{step.kind}", None)
            if emit is None:
                raise CodegenError(f"step {step.kind}")
            lines += emit(env, cp, step)
            lines += self.after_step()

    def after_step(self) -> list:
        return []

    @staticmethod
    def set_reduce_parts(env, cp, step, acc: str):
        """What both targets' set steps render alike: the set's slot among the case's sets, the declarations of the
        node's own values and of each member's rows (`mrow*`), and the combining statement of the body's value into
        `acc`."""
        e = step.node
        temps, code, pointers = env.start()
        value = env.expr(e.body, Access(0), e.width, temps, code, pointers)
        node_decls = [d for n, (name, d) in pointers.items() if not name.startswith("mrow")]
        member_decls = [d for n, (name, d) in pointers.items() if name.startswith("mrow")]
        return (cp.layout.sets.index(e.members()), temps, code, node_decls, member_decls,
                cstyle.REDUCE[e.op].format(a=acc, b=value))

    # ---- the entry point ---------------------------------------------------------------------------------------

    def run_fn(self) -> str:
        return "\n".join(RUN_SIGNATURE + self.run_body() + RUN_CATCH + self.after_run()) + "\n"

    def run_body(self) -> list:
        raise NotImplementedError

    def after_run(self) -> list:
        return []

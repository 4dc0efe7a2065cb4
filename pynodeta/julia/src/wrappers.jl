# Callables that OrdinaryDiffEq calls and that forward to Python (through juliacall) in SciML's argument
# order. Each is a concrete, non-parametric type with an untyped field, on purpose: every solve then
# builds the same ODEFunction and integrator types whatever Python object is inside, so the methods that
# the PrecompileTools workload compiles (with plain Julia functions, as no Python exists while
# precompiling) are exactly the ones used at run time. A parametric `PythonRHS{F}` would specialise on
# `F = PythonCall.Py` and compile everything again in each new Python process. The price is one dynamic
# dispatch per call, ~100 ns next to the microseconds of a Python call.

"""
    PythonRHS(f)

In-place right-hand side `(du, u, p, t) -> nothing` that calls `f(du, u, t)`. From Python, `f` reads
`u` and writes `du` through zero-copy numpy views of these Julia vectors.
"""
struct PythonRHS
    f::Any
end

function (rhs::PythonRHS)(du, u, p, t)
    rhs.f(du, u, t)
    return nothing
end

"""
    PythonJacobian(jac)

In-place Jacobian `(J, u, p, t) -> nothing` calling `jac(J, u, t)`, which writes `∂f/∂u` into the
`length(u) × length(u)` matrix `J` (from torch autograd on the Python side).
"""
struct PythonJacobian
    jac::Any
end

function (jacobian::PythonJacobian)(J, u, p, t)
    jacobian.jac(J, u, t)
    return nothing
end

"""
    PythonJVP(jvp)

In-place Jacobian-vector product `(Jv, v, u, p, t) -> nothing` calling `jvp(Jv, v, u, t)`, which writes
`(∂f/∂u) v` into `Jv`; used by Newton–Krylov linear solvers instead of finite differences.
"""
struct PythonJVP
    jvp::Any
end

function (product::PythonJVP)(Jv, v, u, p, t)
    product.jvp(Jv, v, u, t)
    return nothing
end

"""
    rhs_function(f, jac, jvp)

The `ODEFunction` of a Python right-hand side `f(du, u, t)`, with the optional Python Jacobian
`jac(J, u, t)` and Jacobian-vector product `jvp(Jv, v, u, t)` (`nothing`: OrdinaryDiffEq forms them by
finite differences, as the algorithm's `autodiff` setting says).
"""
function rhs_function(f, jac, jvp)
    return ODEFunction{true, SciMLBase.FullSpecialize}(PythonRHS(f);
        jac = jac === nothing ? nothing : PythonJacobian(jac),
        jvp = jvp === nothing ? nothing : PythonJVP(jvp))
end

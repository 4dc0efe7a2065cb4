"""
    PyNoDeTa

The Julia side of pynodeta's `backend="julia"`: solve `du/dt = f(t, u)` on a flat state vector with
OrdinaryDiffEq, where `f` is usually a Python (PyTorch) function reached through juliacall.

The Python side calls [`solve_flat`](@ref) once per `integrate`; everything else (flattening tensors,
NFE counting, Jacobians from torch, mapping return codes to pynodeta's exceptions, the adjoint) stays
in Python. The GPU path, [`solve_flat_cuda`](@ref), lives in the `PyNoDeTaCUDAExt` extension and is
loaded only when CUDA and DLPack are imported.
"""
module PyNoDeTa

using ADTypes: AutoFiniteDiff
using OrdinaryDiffEqLowOrderRK: BS3, DP5
using OrdinaryDiffEqRosenbrock: Rodas5P
using OrdinaryDiffEqSDIRK: KenCarp4
using OrdinaryDiffEqTsit5: Tsit5
using OrdinaryDiffEqVerner: Vern7
using PrecompileTools: @compile_workload, @setup_workload
using SciMLBase: SciMLBase, DiscreteCallback, ODEFunction, ODEProblem

export METHODS, solve_flat, solve_flat_cuda

include("wrappers.jl")

"""
    METHODS

pynodeta method name => constructor of the OrdinaryDiffEq algorithm. Without a Jacobian from Python,
the stiff methods form it by finite differences: ForwardDiff's dual numbers cannot pass through a
Python function.
"""
const METHODS = Dict{String, Function}(
    "tsit5" => () -> Tsit5(),
    "dopri5" => () -> DP5(),
    "bosh3" => () -> BS3(),
    "vern7" => () -> Vern7(),
    "rodas5" => () -> Rodas5P(autodiff = AutoFiniteDiff()),
    "kencarp4" => () -> KenCarp4(autodiff = AutoFiniteDiff()),
)

"""
    algorithm(method)

The OrdinaryDiffEq algorithm for a pynodeta method name, or `method` itself when it already is an
algorithm (`backend_options={"alg": ...}` on the Python side, e.g. one built with diffeqpy).
"""
function algorithm(method::AbstractString)
    haskey(METHODS, method) ||
        throw(ArgumentError("unknown method $(repr(method)); choose one of $(sort!(collect(keys(METHODS))))"))
    return METHODS[method]()
end
algorithm(alg::SciMLBase.AbstractODEAlgorithm) = alg
algorithm(other) = throw(ArgumentError("method must be a method name or an OrdinaryDiffEq algorithm, got $(typeof(other))"))

# SciMLBase 3 renamed u_modified! to derivative_discontinuity! and keeps u_modified! only as a
# deprecated alias that warns on every call; SciMLBase 2 has only u_modified!.
@static if isdefined(SciMLBase, :derivative_discontinuity!)
    keep_derivative!(integrator) = SciMLBase.derivative_discontinuity!(integrator, false)
else
    keep_derivative!(integrator) = SciMLBase.u_modified!(integrator, false)
end

"""
    step_recorder(step_sizes)

A callback that appends the size of every accepted step to `step_sizes`. It changes neither the state
nor the derivative, so the FSAL stage is reused and the step sequence is the same as without it.
"""
function step_recorder(step_sizes::Vector{Float64})
    record!(integrator) = (push!(step_sizes, abs(integrator.t - integrator.tprev)); keep_derivative!(integrator))
    return DiscreteCallback((u, t, integrator) -> true, record!; save_positions = (false, false))
end

tolerance(x::Real) = Float64(x)
tolerance(x::AbstractVector) = Vector{Float64}(x)

"""Keyword arguments for the optional step-size bounds; `nothing` leaves the solver's default."""
function step_options(direction, first_step, min_step, max_step)
    options = Dict{Symbol, Any}()
    # dt carries the direction of integration (times may decrease).
    first_step === nothing || (options[:dt] = direction * abs(first_step))
    # Like the torch backend, min_step is a floor that forces progress rather than an error threshold.
    min_step === nothing || (options[:dtmin] = min_step; options[:force_dtmin] = true)
    max_step === nothing || (options[:dtmax] = max_step)
    return options
end

"""
    solve_flat(f, u0, times, method; jac, jvp, reltol, abstol, maxiters, first_step, min_step, max_step)

Solve `du/dt = f(t, u)` from `u0` at `times[1]` and save the state at every entry of `times`
(strictly increasing or strictly decreasing). `f(du, u, t)` writes the derivative into `du`;
`jac(J, u, t)` and `jvp(Jv, v, u, t)`, when given, write the Jacobian and Jacobian-vector products.
`method` is a name in [`METHODS`](@ref) or an OrdinaryDiffEq algorithm. `reltol`/`abstol` are numbers
or per-element vectors; `maxiters` bounds attempted steps.

Returns a named tuple:
- `t`: the times reached (a prefix of `times` when the solve stopped early), `u`: the states there,
  a `length(u0) × length(t)` matrix;
- `retcode`: the return code as a string (`"Success"`, `"MaxIters"`, `"DtLessThanMin"`, ...);
- `u_finite`: whether the integrator's last state is finite (tells a collapsed step size from a
  blow-up when the return code is `"Unstable"`);
- `t_reached`, `dt`: where the integrator stopped and its last step size;
- `step_sizes`: every accepted step; `nf`, `naccept`, `nreject`, `njacs`: from `sol.stats`.
"""
function solve_flat(f, u0::AbstractVector{<:AbstractFloat}, times::AbstractVector{<:Real}, method;
        jac = nothing, jvp = nothing, options...)
    return solve_state(rhs_function(f, jac, jvp), Vector{eltype(u0)}(u0), times, method; options...)
end

"""
    solve_flat_cuda(f, u0, times, method, from_dlpack; options...)

The GPU path, defined by the `PyNoDeTaCUDAExt` extension (needs CUDA and DLPack loaded): `u0` is a
CUDA torch tensor, `f(du, u, t)` receives torch views of Julia's `CuVector`s, `from_dlpack` is
`torch.from_dlpack`. Results come back as a CUDA torch tensor `u` of shape `(length(t), length(u0))`.
"""
function solve_flat_cuda end

"""Solve with the state vector `u` (owned, and overwritten); shared by the CPU and GPU entry points."""
function solve_state(rhs::ODEFunction, u::AbstractVector, times::AbstractVector{<:Real}, method;
        reltol, abstol, maxiters::Integer, first_step = nothing, min_step = nothing, max_step = nothing)
    length(times) >= 2 || throw(ArgumentError("times needs at least two entries, got $(length(times))"))
    saveat = Vector{Float64}(times)
    step_sizes = Float64[]
    prob = ODEProblem(rhs, u, (saveat[1], saveat[end]))
    integrator = SciMLBase.init(prob, algorithm(method);
        reltol = tolerance(reltol), abstol = tolerance(abstol), saveat = saveat,
        save_everystep = false, maxiters = maxiters, callback = step_recorder(step_sizes),
        step_options(sign(saveat[end] - saveat[1]), first_step, min_step, max_step)...)
    SciMLBase.solve!(integrator)
    return summarize(integrator.sol, integrator, step_sizes)
end

"""The solution as plain arrays, numbers and strings, which cross into Python without Julia types."""
function summarize(sol, integrator, step_sizes)
    saved = similar(integrator.u, length(integrator.u), length(sol.u))
    for (j, uj) in enumerate(sol.u)
        saved[:, j] .= uj
    end
    return (t = Vector{Float64}(sol.t), u = saved, retcode = String(Symbol(sol.retcode)),
        u_finite = all(isfinite, integrator.u),
        t_reached = Float64(integrator.t), dt = Float64(integrator.dt), step_sizes = step_sizes,
        nf = sol.stats.nf, naccept = sol.stats.naccept, nreject = sol.stats.nreject,
        njacs = sol.stats.njacs)
end

include("workload.jl")

end # module

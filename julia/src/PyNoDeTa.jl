"""
    PyNoDeTa

The Julia side of pynodeta's `backend="julia"`: solve `du/dt = f(t, u)` on a flat state vector with
OrdinaryDiffEq, where `f` is usually a Python (PyTorch) function reached through juliacall.

The Python side calls [`solve_flat`](@ref) once per `integrate`; everything else (flattening tensors,
NFE counting, mapping return codes to pynodeta's exceptions, the adjoint) stays in Python.
"""
module PyNoDeTa

using ADTypes: AutoFiniteDiff
using OrdinaryDiffEqLowOrderRK: BS3, DP5
using OrdinaryDiffEqRosenbrock: Rodas5P
using OrdinaryDiffEqSDIRK: KenCarp4
using OrdinaryDiffEqTsit5: Tsit5
using OrdinaryDiffEqVerner: Vern7
using SciMLBase: SciMLBase, DiscreteCallback, ODEFunction, ODEProblem

export METHODS, solve_flat

"""
    METHODS

pynodeta method name => constructor of the OrdinaryDiffEq algorithm. The stiff methods form their
Jacobians by finite differences: the right-hand side is a Python function, which ForwardDiff's dual
numbers cannot pass through.
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
    PythonRHS(f)

In-place right-hand side `(du, u, p, t) -> nothing` that calls `f(du, u, t)`. From Python, `f` reads
`u` and writes `du` through zero-copy numpy views of these Julia vectors.
"""
struct PythonRHS{F}
    f::F
end

function (rhs::PythonRHS)(du, u, p, t)
    rhs.f(du, u, t)
    return nothing
end

# SciMLBase v3 renamed u_modified! to derivative_discontinuity!; the old name is gone there.
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
    solve_flat(f, u0, times, method; reltol, abstol, maxiters, first_step, min_step, max_step)

Solve `du/dt = f(t, u)` from `u0` at `times[1]` and save the state at every entry of `times`
(strictly increasing or strictly decreasing). `f(du, u, t)` writes the derivative into `du`.
`reltol`/`abstol` are numbers or per-element vectors; `maxiters` bounds attempted steps.

Returns a named tuple:
- `t`: the times reached (a prefix of `times` when the solve stopped early), `u`: the states there,
  a `length(u0) × length(t)` matrix;
- `retcode`: the return code as a string (`"Success"`, `"MaxIters"`, `"DtLessThanMin"`, ...);
- `t_reached`, `dt`: where the integrator stopped and its last step size;
- `step_sizes`: every accepted step; `nf`, `naccept`, `nreject`, `njacs`: from `sol.stats`.
"""
function solve_flat(f, u0::AbstractVector{<:AbstractFloat}, times::AbstractVector{<:Real},
        method::AbstractString; reltol, abstol, maxiters::Integer,
        first_step = nothing, min_step = nothing, max_step = nothing)
    haskey(METHODS, method) ||
        throw(ArgumentError("unknown method $(repr(method)); choose one of $(sort!(collect(keys(METHODS))))"))
    length(times) >= 2 || throw(ArgumentError("times needs at least two entries, got $(length(times))"))
    saveat = Vector{Float64}(times)
    u = Vector{eltype(u0)}(u0)
    step_sizes = Float64[]
    rhs = ODEFunction{true, SciMLBase.FullSpecialize}(PythonRHS(f))
    prob = ODEProblem(rhs, u, (saveat[1], saveat[end]))
    integrator = SciMLBase.init(prob, METHODS[method]();
        reltol = tolerance(reltol), abstol = tolerance(abstol), saveat = saveat,
        save_everystep = false, maxiters = maxiters, callback = step_recorder(step_sizes),
        step_options(sign(saveat[end] - saveat[1]), first_step, min_step, max_step)...)
    SciMLBase.solve!(integrator)
    return summarize(integrator.sol, integrator, step_sizes)
end

"""The solution as plain arrays, numbers and strings, which cross into Python without Julia types."""
function summarize(sol, integrator, step_sizes)
    saved = Matrix{eltype(integrator.u)}(undef, length(integrator.u), length(sol.u))
    for (j, uj) in enumerate(sol.u)
        saved[:, j] .= uj
    end
    return (t = Vector{Float64}(sol.t), u = saved, retcode = String(Symbol(sol.retcode)),
        t_reached = Float64(integrator.t), dt = Float64(integrator.dt), step_sizes = step_sizes,
        nf = sol.stats.nf, naccept = sol.stats.naccept, nreject = sol.stats.nreject,
        njacs = sol.stats.njacs)
end

end # module

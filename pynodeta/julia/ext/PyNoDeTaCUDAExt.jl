"""
    PyNoDeTaCUDAExt

The GPU path of `backend="julia"`: the state stays in GPU memory for the whole solve. Loaded by Julia
only when both CUDA and DLPack are imported (pynodeta does that only when asked for the GPU path), so
the CPU path never loads CUDA.jl.

Data flow, with no host copies:
- the initial state arrives as a CUDA torch tensor and is wrapped by DLPack as a `CuVector` (then
  copied once on the device, so that Julia owns the state it overwrites);
- each right-hand-side call hands Python torch views of Julia's `du` and `u` (DLPack, shared memory);
- the saved states go back to Python as one CUDA torch tensor (DLPack, shared memory).

Synchronisation: torch and CUDA.jl queue work on different CUDA streams. Julia synchronises its stream
before Python reads `u`, and before returning the results; the Python callback synchronises torch's
stream before it returns, so Julia never reads a `du` that torch is still writing.
"""
module PyNoDeTaCUDAExt

using CUDA: CUDA, CuVector
using DLPack: DLPack
using PyNoDeTa: PyNoDeTa, rhs_function, solve_state

"""
    TorchViewRHS(f, from_dlpack)

Calls the Python right-hand side `f(du, u, t)` with torch views of the `CuVector`s `du` and `u`.
Wrapped in `PythonRHS` (untyped field) by `rhs_function`, like the CPU path's callables.
"""
struct TorchViewRHS
    f::Any
    from_dlpack::Any
end

function (rhs::TorchViewRHS)(du, u, t)
    CUDA.synchronize()  # Julia's writes to u (and du's last reads) finish before torch touches them
    rhs.f(DLPack.share(du, rhs.from_dlpack), DLPack.share(u, rhs.from_dlpack), t)
    return nothing
end

function PyNoDeTa.solve_flat_cuda(f, u0_tensor, times::AbstractVector{<:Real}, method, from_dlpack;
        options...)
    # u0_tensor offers only __dlpack__/__dlpack_device__ (so juliacall passes it as a plain Py object).
    shared = DLPack.from_dlpack(u0_tensor)
    shared isa CuVector{<:AbstractFloat} ||
        throw(ArgumentError("u0 must be a 1-D floating-point CUDA tensor, got $(typeof(shared))"))
    CUDA.device!(CUDA.device(shared))  # compute on the GPU that holds torch's tensor
    u = copy(shared)  # the solver overwrites its state; torch's y0 must stay as it was
    result = solve_state(rhs_function(TorchViewRHS(f, from_dlpack), nothing, nothing), u, times, method;
        options...)
    CUDA.synchronize()  # the saved states are complete before torch reads them
    # DLPack reverses the dimensions: Julia's (size, n_saved) column-major is torch's (n_saved, size).
    return merge(result, (u = DLPack.share(result.u, from_dlpack),))
end

end # module

# Compile, once at precompilation, the methods every Python process would otherwise compile on its first
# solve: each method in Float32 and Float64, with and without step-size bounds, and the stiff methods
# with a Jacobian and a Jacobian-vector product. The right-hand sides are Julia functions (no Python
# exists while precompiling); the wrappers in wrappers.jl make the compiled integrator types the same as
# with a Python right-hand side.
@setup_workload begin
    decay!(du, u, t) = (du .= -u; nothing)
    function decay_jacobian!(J, u, t)
        fill!(J, 0)
        for i in axes(J, 1)
            J[i, i] = -1
        end
        return nothing
    end
    decay_jvp!(Jv, v, u, t) = (Jv .= -v; nothing)
    times = [0.0, 0.5, 1.0]
    @compile_workload begin
        for method in keys(METHODS), T in (Float32, Float64)
            u0 = T[1, 2]
            solve_flat(decay!, u0, times, method; reltol = 1e-6, abstol = 1e-8, maxiters = 10^4)
            solve_flat(decay!, u0, times, method; reltol = [1e-6, 1e-6], abstol = [1e-8, 1e-8],
                maxiters = 10^4, first_step = 0.1, min_step = 1e-6, max_step = 0.5)
        end
        for method in ("rodas5", "kencarp4"), T in (Float32, Float64)
            solve_flat(decay!, T[1, 2], times, method; jac = decay_jacobian!, jvp = decay_jvp!,
                reltol = 1e-6, abstol = 1e-8, maxiters = 10^4)
        end
    end
end
